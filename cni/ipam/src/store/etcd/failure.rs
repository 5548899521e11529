//! What went wrong on an endpoint, in the terms of the config: TLS refusals (unknown CA, no or
//! refused client certificate, name mismatch, expiry), login and permission errors, and
//! unreachable endpoints; and whether another endpoint may do better.

use std::time::Duration;

use berth_common::error_chain;

use super::EtcdStore;
use crate::error::IpamError;

/// What went wrong on one endpoint, and whether another endpoint may do better.
pub(super) struct Failure {
    pub endpoint: String,
    pub cause: String,
    /// The endpoint is unreachable or broken: try the next one.
    pub fail_over: bool,
    /// The auth token expired: log in again on the same endpoint.
    pub relogin: bool,
}

impl EtcdStore {
    /// Explains an error of one endpoint in the terms of the config.
    /// `fresh`: the connection was opened for this request, so a transport failure is the
    /// server's first word on it.
    pub(super) fn failure(
        &self,
        endpoint: &str,
        e: &(dyn std::error::Error + 'static),
        fresh: bool,
    ) -> Failure {
        // etcd-client's error does not expose what it wraps through `source()`.
        let e: &(dyn std::error::Error + 'static) = match e.downcast_ref::<etcd_client::Error>() {
            Some(etcd_client::Error::GRpcStatus(s)) => s,
            Some(etcd_client::Error::TransportError(t)) => t,
            _ => e,
        };
        let f = |cause: String, fail_over: bool| Failure {
            endpoint: endpoint.to_string(),
            cause,
            fail_over,
            relogin: false,
        };
        if let Some(cause) = self.tls_cause(endpoint, e) {
            return f(cause, true);
        }
        if let Some(status) = find::<tonic::Status>(e) {
            use tonic::Code;
            let msg = status.message();
            if msg.contains("authentication failed") {
                let user = self.security.user.as_ref().map_or("", |u| u.0.as_str());
                return f(
                    format!(
                        "etcd refused user {user:?} ({msg}): check store.auth.user and the password in store.auth.passwordFile"
                    ),
                    false,
                );
            }
            if msg.contains("authentication is not enabled") {
                return f(
                    format!(
                        "{msg}: remove store.auth, or enable authentication on the etcd cluster"
                    ),
                    false,
                );
            }
            if msg.contains("invalid auth token") || msg.contains("user name is empty") {
                if self.security.user.is_none() {
                    return f(
                        format!(
                            "etcd requires authentication ({msg}): set store.auth (user and passwordFile)"
                        ),
                        false,
                    );
                }
                let mut failure = f(format!("the login expired ({msg})"), false);
                failure.relogin = true;
                return failure;
            }
            if status.code() == Code::PermissionDenied {
                let who = match (&self.security.user, &self.security.tls) {
                    (Some((user, _)), _) => format!("user {user:?}"),
                    (None, Some(t)) if t.identity.is_some() => "the user named by the client certificate's common name (CN), as there is no store.auth,".into(),
                    (None, _) => "this client".into(),
                };
                return f(
                    format!(
                        "permission denied ({msg}): grant {who} read and write on the key prefix {} (etcdctl role grant-permission --prefix), or set store.auth",
                        self.prefix
                    ),
                    false,
                );
            }
            // With TLS 1.3 the server judges the client certificate after the client's side of
            // the handshake is done, and its alert is often lost as it closes the connection
            // (seen as "connection closed", "broken pipe" or "reset" on the first request).
            if let Some(tls) = &self.security.tls
                && fresh
                && matches!(
                    status.code(),
                    Code::Cancelled | Code::Unknown | Code::Unavailable
                )
                && std::error::Error::source(status).is_some()
            {
                let cause = match &tls.identity {
                    None => "TLS: the server closed the connection right after the handshake; no client certificate was sent, and etcd with --client-cert-auth requires one: set store.tls.cert and store.tls.key".to_string(),
                    Some((cert, ..)) => format!(
                        "TLS: the server closed the connection right after the handshake: it may have refused the client certificate {}: check that it is signed by the CA etcd trusts for clients (--trusted-ca-file) and has not expired",
                        cert.display()
                    ),
                };
                return f(cause, true);
            }
            let broken = matches!(
                status.code(),
                Code::Unavailable
                    | Code::Unknown
                    | Code::DeadlineExceeded
                    | Code::Cancelled
                    | Code::Internal
            );
            let mut cause = format!("{msg} (gRPC code {:?})", status.code());
            if let Some(source) = std::error::Error::source(status) {
                cause.push_str(": ");
                cause.push_str(&error_chain(source));
            }
            return f(cause, broken);
        }
        // Transport and I/O errors: this endpoint is unreachable.
        f(error_chain(e), true)
    }

    /// A TLS failure found in the error's causes, as an explanation, or `None`.
    fn tls_cause(&self, endpoint: &str, e: &(dyn std::error::Error + 'static)) -> Option<String> {
        use rustls::CertificateError as C;
        let tls = self.security.tls.as_ref()?;
        let ca = tls.ca_path.display();
        let host = host_of(endpoint);
        // The server's verdict on our certificate arrives as an alert. Some layers (h2) hide the
        // rustls error from `source()`, so the alert is also read from the text.
        let alert = match find_rustls(e) {
            Some(rustls::Error::InvalidCertificate(c)) => {
                return Some(match c {
                    C::UnknownIssuer | C::BadSignature => format!(
                        "TLS: the server's certificate is not signed by the CA in store.tls.ca ({ca}) (unknown CA): set store.tls.ca to the CA that issued the etcd servers' certificates"
                    ),
                    C::NotValidForName | C::NotValidForNameContext { .. } => format!(
                        "TLS: the server's certificate is not valid for the name {host:?} (name mismatch): use an endpoint name or address listed in the certificate's subject alternative names, or reissue the certificate with it"
                    ),
                    C::Expired | C::ExpiredContext { .. } => format!(
                        "TLS: the server's certificate has expired ({c}): renew the etcd server certificate (and check this node's clock)"
                    ),
                    C::NotValidYet | C::NotValidYetContext { .. } => format!(
                        "TLS: the server's certificate is not valid yet ({c}): check this node's clock"
                    ),
                    other => format!(
                        "TLS: the server's certificate was refused ({other}): check store.tls.ca ({ca})"
                    ),
                });
            }
            Some(rustls::Error::AlertReceived(a)) => format!("{a:?}"),
            Some(other) => return Some(format!("TLS: {other}")),
            None => {
                let text = error_chain(e);
                let (_, rest) = text.split_once("received fatal alert: ")?;
                rest.split(|c: char| !c.is_ascii_alphanumeric())
                    .next()
                    .unwrap_or_default()
                    .to_string()
            }
        };
        let refusal = matches!(
            alert.as_str(),
            "CertificateRequired"
                | "HandshakeFailure"
                | "BadCertificate"
                | "CertificateExpired"
                | "UnknownCA"
                | "CertificateUnknown"
                | "CertificateRevoked"
                | "UnsupportedCertificate"
        );
        Some(match (&tls.identity, refusal) {
            (None, true) => format!(
                "TLS: the server requires a client certificate (no client certificate was sent; alert {alert}): set store.tls.cert and store.tls.key"
            ),
            (Some((cert, ..)), true) => format!(
                "TLS: the server refused the client certificate {} (alert {alert}): check that it is signed by the CA etcd trusts for clients (--trusted-ca-file) and has not expired",
                cert.display()
            ),
            (_, false) => format!("TLS: the server ended the connection (alert {alert})"),
        })
    }
}

/// The error of a call that no endpoint served.
pub(super) fn unavailable(
    what: &str,
    timeout: Duration,
    endpoints: usize,
    failures: Vec<Failure>,
) -> IpamError {
    let mut msg = format!("etcd {what} failed");
    if failures.is_empty() {
        msg.push_str(&format!(": no endpoint answered within {timeout:?}"));
    }
    for (i, f) in failures.iter().enumerate() {
        msg.push_str(if i == 0 { ": " } else { "; " });
        msg.push_str(&format!("{}: {}", f.endpoint, f.cause));
    }
    let failed_over = failures.iter().all(|f| f.fail_over);
    if failed_over && failures.len() < endpoints && !failures.is_empty() {
        msg.push_str(&format!(
            "; the other endpoints were not reached within store.timeout ({timeout:?})"
        ));
    }
    IpamError::Unavailable(msg)
}

/// The first error of type `T` among `e` and its causes.
fn find<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(t) = c.downcast_ref::<T>() {
            return Some(t);
        }
        cur = c.source();
    }
    None
}

/// The rustls error among the causes. An `io::Error` hides the error it wraps from
/// `source()`, so each one is opened.
fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(t) = c.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        if let Some(inner) = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && let Some(found) = find_rustls(inner)
        {
            return Some(found);
        }
        cur = c.source();
    }
    None
}

/// The host part of an endpoint URL, as TLS checks it.
fn host_of(endpoint: &str) -> &str {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}
