//! A small certificate authority for test beds and demos (`berthctl certs init`): a CA, a
//! server certificate with SANs, client certificates whose CN is the caller and whose OU and
//! `berth://group/<g>` SAN URIs are its groups. Production sites bring their own PKI.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use time::OffsetDateTime;

/// Prefix of SAN URIs that name a group rather than the caller (the server reads them back
/// as the caller's groups).
pub const GROUP_URI_PREFIX: &str = "berth://group/";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed")]
    Generate(#[from] rcgen::Error),
    #[error("invalid name {0:?} for a certificate")]
    Name(String),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} already exists: pass --force to overwrite")]
    Exists { path: PathBuf },
}

/// Validity window of a certificate.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From one hour ago (clock skew) to `days` from now.
    pub fn days(days: u32) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - time::Duration::hours(1),
            not_after: now + time::Duration::days(i64::from(days)),
        }
    }

    /// A window that ended yesterday (for tests of expiry handling).
    pub fn expired() -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - time::Duration::days(3),
            not_after: now - time::Duration::days(1),
        }
    }
}

/// A PEM certificate and its PEM private key.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// Serial number (big-endian bytes), for revocation.
    pub serial: Vec<u8>,
}

impl Issued {
    /// DER of the (first) certificate.
    pub fn cert_der(&self) -> Result<Vec<u8>, PkiError> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let der = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|_| PkiError::Name("unparsable certificate PEM".into()))?;
        Ok(der.to_vec())
    }
}

/// What a client certificate says about its holder.
#[derive(Debug, Clone, Default)]
pub struct ClientSpec {
    pub common_name: String,
    /// The first becomes the OU; all become `berth://group/<g>` SAN URIs.
    pub groups: Vec<String>,
    pub dns: Vec<String>,
    pub uris: Vec<String>,
}

/// A CA that can issue server and client certificates.
pub struct Authority {
    pub cert: Issued,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    pub fn new(common_name: &str, validity: Validity) -> Result<Authority, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name, None);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.self_signed(&key)?;
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: Vec::new(),
        };
        Ok(Authority {
            cert: issued,
            issuer: Issuer::new(params, key),
        })
    }

    /// A server certificate; each SAN that parses as an IP becomes an IP SAN, others DNS.
    pub fn issue_server(&self, sans: &[String], validity: Validity) -> Result<Issued, PkiError> {
        let cn = sans
            .first()
            .cloned()
            .unwrap_or_else(|| "berth-agent".into());
        let mut params = CertificateParams::new(sans.to_vec())?;
        params.distinguished_name = dn(&cn, None);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        self.sign(params)
    }

    pub fn issue_client(&self, spec: &ClientSpec, validity: Validity) -> Result<Issued, PkiError> {
        if spec.common_name.is_empty() {
            return Err(PkiError::Name(spec.common_name.clone()));
        }
        let mut params = CertificateParams::new(spec.dns.clone())?;
        params.distinguished_name = dn(&spec.common_name, spec.groups.first().map(String::as_str));
        for u in spec
            .uris
            .iter()
            .cloned()
            .chain(spec.groups.iter().map(|g| format!("{GROUP_URI_PREFIX}{g}")))
        {
            let ia5 = u.clone().try_into().map_err(|_| PkiError::Name(u))?;
            params.subject_alt_names.push(SanType::URI(ia5));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        self.sign(params)
    }

    fn sign(&self, mut params: CertificateParams) -> Result<Issued, PkiError> {
        // 16 random bytes, top bit clear (a positive INTEGER without padding).
        let mut serial = uuid::Uuid::new_v4().as_bytes().to_vec();
        serial[0] &= 0x7f;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
        })
    }

    /// A CRL (PEM) revoking these serials, valid for `days`.
    pub fn crl(&self, revoked: &[&[u8]], number: u64, days: u32) -> Result<String, PkiError> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(5),
            next_update: now + time::Duration::days(i64::from(days.max(1))),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: now - time::Duration::minutes(1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

fn dn(cn: &str, ou: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(ou) = ou {
        dn.push(DnType::OrganizationalUnitName, ou);
    }
    dn
}

/// What `berthctl certs init` writes.
#[derive(Debug, Clone)]
pub struct InitSpec {
    pub server_sans: Vec<String>,
    pub clients: Vec<ClientSpec>,
    pub days: u32,
    pub force: bool,
}

/// Files written by [`init_dir`]: `ca.pem`, `ca-key.pem`, `server.pem`, `server-key.pem`,
/// and `<cn>.pem` + `<cn>-key.pem` per client. Keys are mode 0600.
pub fn init_dir(dir: &Path, spec: &InitSpec) -> Result<Vec<PathBuf>, PkiError> {
    let write = |name: &str, data: &str, secret: bool| -> Result<PathBuf, PkiError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(name);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).mode(if secret { 0o600 } else { 0o644 });
        if spec.force {
            opts.create(true).truncate(true);
        } else {
            opts.create_new(true);
        }
        let mut f = opts.open(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                PkiError::Exists { path: path.clone() }
            } else {
                PkiError::Write {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        f.write_all(data.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|source| PkiError::Write {
                path: path.clone(),
                source,
            })?;
        Ok(path)
    };
    for c in &spec.clients {
        let ok = !c.common_name.is_empty()
            && c.common_name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.@".contains(ch))
            && !c.common_name.starts_with('.')
            && !["ca", "server"].contains(&c.common_name.as_str());
        if !ok {
            return Err(PkiError::Name(c.common_name.clone()));
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let validity = Validity::days(spec.days);
    let ca = Authority::new("berth test CA", validity)?;
    let mut out = vec![
        write("ca.pem", &ca.cert.cert_pem, false)?,
        write("ca-key.pem", &ca.cert.key_pem, true)?,
    ];
    let server = ca.issue_server(&spec.server_sans, validity)?;
    out.push(write("server.pem", &server.cert_pem, false)?);
    out.push(write("server-key.pem", &server.key_pem, true)?);
    for c in &spec.clients {
        let issued = ca.issue_client(c, validity)?;
        out.push(write(
            &format!("{}.pem", c.common_name),
            &issued.cert_pem,
            false,
        )?);
        out.push(write(
            &format!("{}-key.pem", c.common_name),
            &issued.key_pem,
            true,
        )?);
    }
    Ok(out)
}
