//! A local certificate authority for tests and the local cluster: one CA and
//! leaf certificates for cluster hostnames and loopback addresses.
//!
//! Both follow the RFC 5280 profile that strict clients enforce
//! (`openssl verify -x509_strict`, Python 3.13's default context, the
//! CA/Browser Forum's baseline): Subject and Authority Key Identifiers,
//! a critical keyUsage (the CA: keyCertSign and cRLSign; a leaf:
//! digitalSignature, plus keyEncipherment for an RSA key), extendedKeyUsage
//! serverAuth on a leaf, a critical basicConstraints (CA:TRUE with path
//! length 0 on the CA, CA:FALSE on a leaf), and a leaf valid for at most
//! 398 days.

use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// How long a leaf is valid by default: under the 398 days clients accept.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(397 * 24 * 3600);
/// The longest leaf validity strict clients accept.
pub const MAX_LEAF_VALIDITY: Duration = Duration::from_secs(398 * 24 * 3600);
/// How long the CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start this long before they are made, for clock skew.
const BACKDATE: Duration = Duration::from_secs(300);

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

/// The name of the example CA in `configs/tls/` (written by
/// `cargo run -p integration --example dev-certs`).
pub const EXAMPLE_CA: &str = "unMTA example CA (not for production)";

impl LocalCa {
    pub fn new(common_name: &str) -> anyhow::Result<LocalCa> {
        LocalCa::with_key(common_name, KeyPair::generate()?)
    }

    /// The CA `common_name` whose PEM private key is `key_pem` (the
    /// `ca-key.pem` beside a CA's `ca.pem`): what it issues verifies
    /// against that `ca.pem`, which names the same subject and key.
    pub fn from_key(common_name: &str, key_pem: &str) -> anyhow::Result<LocalCa> {
        LocalCa::with_key(common_name, KeyPair::from_pem(key_pem)?)
    }

    fn with_key(common_name: &str, key: KeyPair) -> anyhow::Result<LocalCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, CA_VALIDITY)?;
        let cert = params.self_signed(&key)?;
        Ok(LocalCa { cert, key })
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA's private key, PEM (for an example CA whose key is public).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A server certificate for `names` (DNS names and/or IP addresses),
    /// valid for [`LEAF_VALIDITY`].
    pub fn issue(&self, names: &[&str]) -> anyhow::Result<Issued> {
        self.issue_valid_for(names, LEAF_VALIDITY)
    }

    /// A server certificate for `names` that expires `validity` from now
    /// (a renewal, or one about to expire); at most [`MAX_LEAF_VALIDITY`].
    pub fn issue_valid_for(&self, names: &[&str], validity: Duration) -> anyhow::Result<Issued> {
        anyhow::ensure!(
            validity + BACKDATE <= MAX_LEAF_VALIDITY,
            "a leaf certificate may be valid for at most 398 days"
        );
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        let key = KeyPair::generate()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if key.algorithm() == &rcgen::PKCS_RSA_SHA256 {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        set_validity(&mut params, validity)?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes `ca.pem`, and `<stem>.pem` / `<stem>-key.pem` for `names`.
    pub fn write_bundle(&self, dir: &Path, stem: &str, names: &[&str]) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("ca.pem"), self.cert_pem())?;
        self.write_leaf(dir, stem, names)
    }

    /// Writes `<stem>.pem` / `<stem>-key.pem` for `names` (not `ca.pem`).
    pub fn write_leaf(&self, dir: &Path, stem: &str, names: &[&str]) -> anyhow::Result<()> {
        let issued = self.issue(names)?;
        std::fs::write(dir.join(format!("{stem}.pem")), issued.cert_pem)?;
        std::fs::write(dir.join(format!("{stem}-key.pem")), issued.key_pem)?;
        Ok(())
    }
}

/// Valid from [`BACKDATE`] ago until `validity` from now.
fn set_validity(params: &mut CertificateParams, validity: Duration) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let at = |secs: u64| time::OffsetDateTime::from_unix_timestamp(secs as i64);
    params.not_before = at((now - BACKDATE).as_secs())?;
    params.not_after = at((now + validity).as_secs())?;
    Ok(())
}

/// `openssl verify -x509_strict -purpose sslserver` of `leaf` against the
/// CA in `ca` alone: `Err` holds what openssl said.
pub fn openssl_verify_strict(ca: &Path, leaf: &Path) -> anyhow::Result<()> {
    let out = std::process::Command::new("openssl")
        .args(["verify", "-x509_strict", "-purpose", "sslserver", "-CAfile"])
        .arg(ca)
        .arg(leaf)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run openssl (is it installed?): {e}"))?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(
        out.status.success() && said.trim_end().ends_with(": OK"),
        "openssl verify -x509_strict refuses {}: {said}",
        leaf.display()
    );
    Ok(())
}
