//! Certificates made for a test (rcgen): a CA, a server certificate for 127.0.0.1 and
//! localhost signed by it, client certificates with a chosen Common Name, and a second CA
//! that the broker does not trust.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// PEM files in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

impl Pki {
    /// A CA and a server certificate signed by it.
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let issuer = ca("test CA");
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, issuer.pem()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "broker");
        let cert = params.signed_by(&key, &*issuer).unwrap();
        let server_cert = dir.path().join("server.pem");
        let server_key = dir.path().join("server.key");
        std::fs::write(&server_cert, cert.pem()).unwrap();
        std::fs::write(&server_key, key.serialize_pem()).unwrap();
        Pki {
            dir,
            ca: ca_path,
            server_cert,
            server_key,
            issuer,
        }
    }

    /// A client certificate with Common Name `cn`, signed by this CA (or, with `trusted`
    /// false, by a CA of its own that the broker does not know). Returns (cert, key) PEM
    /// paths.
    pub fn client(&self, cn: &str, trusted: bool) -> (PathBuf, PathBuf) {
        let rogue;
        let issuer = if trusted {
            &self.issuer
        } else {
            rogue = ca("rogue CA");
            &rogue
        };
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &**issuer).unwrap();
        let cert_path = self.dir.path().join(format!("{cn}-{trusted}.pem"));
        let key_path = self.dir.path().join(format!("{cn}-{trusted}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
