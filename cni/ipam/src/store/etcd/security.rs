//! TLS material and credentials of an etcd store, read from the node's files, and the checks
//! of the endpoint list against them.

use std::path::{Path, PathBuf};

use crate::config::{EtcdAuth, EtcdTls};
use crate::error::IpamError;

/// Checks the endpoint list of an etcd store: at least one, each `http://`, `https://` or
/// without a scheme (then `https://` when `tls` is set, `http://` otherwise), all of one scheme,
/// and `https://` exactly when `store.tls` is set.
pub fn check_endpoints(endpoints: &[String], tls: bool) -> Result<(), IpamError> {
    let invalid = |m: String| Err(IpamError::InvalidConfig(m));
    if endpoints.is_empty() {
        return invalid("etcd store needs at least one endpoint".into());
    }
    let mut first: Option<(&str, bool)> = None;
    for e in endpoints {
        let https = match e.split_once("://") {
            Some(("https", rest)) if !rest.is_empty() => true,
            Some(("http", rest)) if !rest.is_empty() => false,
            Some(_) => {
                return invalid(format!(
                    "etcd endpoint {e:?} is not http://host:port or https://host:port"
                ));
            }
            None if e.is_empty() => return invalid("etcd endpoint \"\" is empty".into()),
            None => tls,
        };
        if let Some((other, other_https)) = first
            && other_https != https
        {
            return invalid(format!(
                "etcd endpoints mix http and https ({other:?} and {e:?}): use https:// for all of them (with store.tls) or http:// for all"
            ));
        }
        first.get_or_insert((e, https));
        if tls && !https {
            return invalid(format!(
                "store.tls is set but etcd endpoint {e:?} is http://: write it as https://, or remove store.tls if the cluster really serves plain http"
            ));
        }
        if !tls && https {
            return invalid(format!(
                "etcd endpoint {e:?} is https:// but store.tls is not set: set store.tls.ca to the CA of the etcd cluster (and store.tls.cert/key if etcd runs with --client-cert-auth)"
            ));
        }
    }
    Ok(())
}

/// TLS material and credentials of an etcd store, read from the node's files.
#[derive(Clone, Default)]
pub struct Security {
    pub(super) tls: Option<TlsMaterial>,
    pub(super) user: Option<(String, String)>,
}

#[derive(Clone)]
pub(super) struct TlsMaterial {
    pub(super) ca_path: PathBuf,
    pub(super) ca: Vec<u8>,
    /// Client certificate path, certificate PEM, key PEM.
    pub(super) identity: Option<(PathBuf, Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("ca", &self.tls.as_ref().map(|t| &t.ca_path))
            .field(
                "cert",
                &self
                    .tls
                    .as_ref()
                    .and_then(|t| t.identity.as_ref().map(|i| &i.0)),
            )
            .field("user", &self.user.as_ref().map(|u| &u.0))
            .finish()
    }
}

fn read_config_file(what: &str, path: &Path) -> Result<Vec<u8>, IpamError> {
    std::fs::read(path).map_err(|e| {
        IpamError::InvalidConfig(format!(
            "{what} {}: cannot read it ({e}): mount the file on the node or fix the path",
            path.display()
        ))
    })
}

impl Security {
    /// Plain http, no user.
    pub fn none() -> Security {
        Security::default()
    }

    /// Reads and checks the PEM files of `store.tls` and the password file of `store.auth`.
    /// A missing, unreadable or malformed file is invalid config (CNI code 7).
    pub fn load(tls: Option<&EtcdTls>, auth: Option<&EtcdAuth>) -> Result<Security, IpamError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = |what: &str, path: &Path| -> Result<Vec<u8>, IpamError> {
            let pem = read_config_file(what, path)?;
            let n = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    IpamError::InvalidConfig(format!(
                        "{what} {}: not a PEM certificate ({e})",
                        path.display()
                    ))
                })?
                .len();
            if n == 0 {
                return Err(IpamError::InvalidConfig(format!(
                    "{what} {}: holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")",
                    path.display()
                )));
            }
            Ok(pem)
        };
        let tls = match tls {
            None => None,
            Some(t) => {
                let ca = certs("store.tls.ca", &t.ca)?;
                let identity = match (&t.cert, &t.key) {
                    (Some(cert), Some(key)) => {
                        let cert_pem = certs("store.tls.cert", cert)?;
                        let key_pem = read_config_file("store.tls.key", key)?;
                        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                            IpamError::InvalidConfig(format!(
                                "store.tls.key {}: not a PEM private key ({e})",
                                key.display()
                            ))
                        })?;
                        Some((cert.clone(), cert_pem, key_pem))
                    }
                    (None, None) => None,
                    _ => {
                        return Err(IpamError::InvalidConfig(
                            "store.tls.cert and store.tls.key go together: set both (the client certificate and its private key) or neither".into(),
                        ));
                    }
                };
                Some(TlsMaterial {
                    ca_path: t.ca.clone(),
                    ca,
                    identity,
                })
            }
        };
        let user = match auth {
            None => None,
            Some(a) => {
                let raw = read_config_file("store.auth.passwordFile", &a.password_file)?;
                let mut password = String::from_utf8(raw).map_err(|_| {
                    IpamError::InvalidConfig(format!(
                        "store.auth.passwordFile {}: is not UTF-8 text",
                        a.password_file.display()
                    ))
                })?;
                if password.ends_with('\n') {
                    password.pop();
                    if password.ends_with('\r') {
                        password.pop();
                    }
                }
                if password.is_empty() {
                    return Err(IpamError::InvalidConfig(format!(
                        "store.auth.passwordFile {}: is empty",
                        a.password_file.display()
                    )));
                }
                Some((a.user.clone(), password))
            }
        };
        Ok(Security { tls, user })
    }
}
