//! Certificates for the etcd TLS tests, made with rcgen: a CA, server certificates (good,
//! expired, for the wrong name), client certificates (good, expired, of another CA).
#![allow(dead_code)] // each test file uses a part of the shared helpers

use std::path::PathBuf;

use berth_ipam_core::EtcdTls;
use berth_ipam_core::testsupport::ServerTls;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A CA and the certificates the tests need, as PEM files in a temp dir.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        let ca = |cn: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, cn);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
        };
        let leaf = |issuer: &CertifiedIssuer<'_, KeyPair>,
                    name: &str,
                    sans: &[&str],
                    cn: &str,
                    expired: bool| {
            let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
            let mut p = CertificateParams::new(sans).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            // etcd's own gRPC gateway dials the server with the server certificate: both uses.
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            if expired {
                p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                p.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, issuer).unwrap();
            write(&format!("{name}.crt"), &cert.pem());
            write(&format!("{name}.key"), &key.serialize_pem());
        };
        let main = ca("berth test CA");
        let other = ca("some other CA");
        write("ca.crt", &main.pem());
        write("other-ca.crt", &other.pem());
        let here = ["localhost", "127.0.0.1"];
        leaf(&main, "server", &here, "etcd", false);
        leaf(&main, "server-expired", &here, "etcd", true);
        leaf(
            &main,
            "server-wrong-name",
            &["etcd.example.invalid"],
            "etcd",
            false,
        );
        leaf(&main, "client", &[], "berth-node", false);
        leaf(&main, "client-expired", &[], "berth-node", true);
        leaf(&other, "client-other-ca", &[], "berth-node", false);
        Pki { dir }
    }

    pub fn server(&self, name: &str) -> ServerTls {
        ServerTls {
            cert: self.path(&format!("{name}.crt")),
            key: self.path(&format!("{name}.key")),
            client_ca: Some(self.path("ca.crt")),
        }
    }

    /// `store.tls` with this CA file and, when `client` is given, that client certificate.
    pub fn tls(&self, ca: &str, client: Option<&str>) -> EtcdTls {
        EtcdTls {
            ca: self.path(ca),
            cert: client.map(|c| self.path(&format!("{c}.crt"))),
            key: client.map(|c| self.path(&format!("{c}.key"))),
        }
    }
}
