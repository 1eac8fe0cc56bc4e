//! A local certificate authority for tests and the local cluster: one CA and
//! leaf certificates for cluster hostnames and loopback addresses.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// A CA that can issue leaf certificates.
pub struct LocalCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A PEM certificate chain and its PEM private key.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl LocalCa {
    pub fn new(common_name: &str) -> anyhow::Result<LocalCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(LocalCa { cert, key })
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `names`: DNS names and/or IP addresses.
    pub fn issue(&self, names: &[&str]) -> anyhow::Result<Issued> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes `ca.pem`, and `<stem>.pem` / `<stem>-key.pem` for `names`.
    pub fn write_bundle(&self, dir: &Path, stem: &str, names: &[&str]) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        let issued = self.issue(names)?;
        std::fs::write(dir.join("ca.pem"), self.cert_pem())?;
        std::fs::write(dir.join(format!("{stem}.pem")), issued.cert_pem)?;
        std::fs::write(dir.join(format!("{stem}-key.pem")), issued.key_pem)?;
        Ok(())
    }
}
