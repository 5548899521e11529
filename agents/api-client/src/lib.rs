//! What a client of berth's agent API needs, without the server: connecting over mutual TLS
//! or the local socket ([`connect`]), choosing the endpoint and certificates from flags or a
//! context file ([`context`]), making certificates for test beds ([`pki`]), and checking an
//! audit log's hash chain offline ([`audit`]). berthctl is built on it; the server (berth-api)
//! shares its audit format and PKI conventions from here.

#![forbid(unsafe_code)]

pub mod audit;
pub mod connect;
pub mod context;
pub mod pki;

pub use connect::{ClientError, TlsFiles, connect, connect_unix};
