//! Who is calling: identities from client certificates and unix peer credentials.
//!
//! Names carry a prefix saying where they came from, so a policy cannot confuse a DNS SAN
//! with a common name: `cn:<CN>`, `dns:<SAN>`, `uri:<SAN>`, `unix:uid:<n>`. Groups come
//! from the subject's OU attributes and from SAN URIs `berth://group/<name>`.

use std::net::SocketAddr;

use serde::Serialize;

/// How the caller reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Mtls,
    Unix,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Mtls => "mtls",
            Transport::Unix => "unix",
        }
    }
}

/// An authenticated caller, fixed for the life of its connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Caller {
    /// The principal written to the audit log (first of `names`).
    pub identity: String,
    /// Every name the caller is known by, each prefixed with its kind.
    pub names: Vec<String>,
    pub groups: Vec<String>,
    pub transport: Transport,
    /// Peer address (`ip:port`) or `unix:pid:<n>`.
    pub peer: String,
}

/// A client certificate berth cannot take an identity from.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("client certificate is not valid DER: {0}")]
    Parse(String),
    #[error("client certificate has neither a subject CN nor DNS/URI SANs: reissue it with a CN")]
    NoName,
}

pub use berth_api_client::pki::GROUP_URI_PREFIX;

impl Caller {
    /// Identity of an mTLS peer from its (already verified) leaf certificate.
    pub fn from_cert_der(der: &[u8], peer: SocketAddr) -> Result<Caller, IdentityError> {
        use x509_parser::prelude::*;
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| IdentityError::Parse(e.to_string()))?;
        let mut names = Vec::new();
        let mut groups = Vec::new();
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                push_unique(&mut names, format!("cn:{s}"));
            }
        }
        for ou in cert.subject().iter_organizational_unit() {
            if let Ok(s) = ou.as_str() {
                push_unique(&mut groups, s.to_string());
            }
        }
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => push_unique(&mut names, format!("dns:{d}")),
                    GeneralName::URI(u) => match u.strip_prefix(GROUP_URI_PREFIX) {
                        Some(g) if !g.is_empty() => push_unique(&mut groups, g.to_string()),
                        Some(_) => {}
                        None => push_unique(&mut names, format!("uri:{u}")),
                    },
                    _ => {}
                }
            }
        }
        let identity = names.first().cloned().ok_or(IdentityError::NoName)?;
        Ok(Caller {
            identity,
            names,
            groups,
            transport: Transport::Mtls,
            peer: peer.to_string(),
        })
    }

    /// Identity of a local caller on the unix socket, from SO_PEERCRED.
    pub fn from_unix(uid: u32, gid: u32, pid: Option<i32>) -> Caller {
        let identity = format!("unix:uid:{uid}");
        Caller {
            names: vec![identity.clone()],
            identity,
            groups: vec![format!("unix:gid:{gid}")],
            transport: Transport::Unix,
            peer: pid.map_or_else(|| "unix".to_string(), |p| format!("unix:pid:{p}")),
        }
    }
}

fn push_unique(v: &mut Vec<String>, s: String) {
    if !v.contains(&s) {
        v.push(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_api_client::pki::{Authority, ClientSpec, Validity};

    #[test]
    fn names_and_groups_come_from_cn_ou_and_sans() {
        let ca = Authority::new("test-ca", Validity::days(1)).unwrap();
        let spec = ClientSpec {
            common_name: "alice".into(),
            groups: vec!["ops".into(), "dev".into()],
            dns: vec!["alice.example".into()],
            uris: vec!["spiffe://berth.test/ns/ops/sa/alice".into()],
        };
        let issued = ca.issue_client(&spec, Validity::days(1)).unwrap();
        let der = issued.cert_der().unwrap();
        let c = Caller::from_cert_der(&der, "127.0.0.1:5".parse().unwrap()).unwrap();
        assert_eq!(c.identity, "cn:alice");
        assert_eq!(
            c.names,
            vec![
                "cn:alice",
                "dns:alice.example",
                "uri:spiffe://berth.test/ns/ops/sa/alice"
            ]
        );
        assert_eq!(c.groups, vec!["ops", "dev"]);
        assert_eq!(c.transport, Transport::Mtls);
        assert_eq!(c.peer, "127.0.0.1:5");
    }

    #[test]
    fn unix_identity_is_the_uid() {
        let c = Caller::from_unix(0, 0, Some(42));
        assert_eq!(c.identity, "unix:uid:0");
        assert_eq!(c.groups, vec!["unix:gid:0"]);
        assert_eq!(c.peer, "unix:pid:42");
    }

    #[test]
    fn garbage_der_is_refused() {
        let e = Caller::from_cert_der(b"nope", "127.0.0.1:1".parse().unwrap()).unwrap_err();
        assert!(matches!(e, IdentityError::Parse(_)), "{e:?}");
    }
}
