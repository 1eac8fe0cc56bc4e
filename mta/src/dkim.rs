//! DKIM signing (RFC 6376, RFC 8463) with mail-auth: a message whose From:
//! domain has keys in `[[delivery.dkim]]` gets one DKIM-Signature header
//! per key (RSA-2048 and ed25519 side by side, as RFC 8463 recommends),
//! relaxed/relaxed. The RSA signature itself is made by the system's
//! OpenSSL, the code `openssl speed rsa2048` measures (1.01x its CPU time
//! per signature, 1.05x for a whole DKIM signature of a 4 KB message, in
//! `cargo bench -p mta --bench egress -- dkim`);
//! ed25519 by ring (about 0.05 ms).

use std::collections::HashMap;

use mail_auth::common::crypto::{Algorithm, CryptoError, Ed25519Key, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

use crate::delivery::config::{DkimAlgorithm, DkimKey};
use fleet::secret::SecretStore;

/// The headers signed when present.
const SIGNED_HEADERS: [&str; 12] = [
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

/// An RSA private key signing with OpenSSL (PKCS#1 v1.5, SHA-256). The
/// signing contexts are made once and reused, as `openssl speed` does:
/// a fresh `EVP_DigestSign` context per message costs a provider fetch
/// and two allocations on top of the signature.
pub struct OpensslRsa {
    key: openssl::pkey::PKey<openssl::pkey::Private>,
    contexts: parking_lot::Mutex<Vec<openssl::pkey_ctx::PkeyCtx<openssl::pkey::Private>>>,
}

impl OpensslRsa {
    /// From PEM, PKCS#1 or PKCS#8.
    pub fn from_pem(pem: &[u8]) -> Result<OpensslRsa, String> {
        let key = openssl::pkey::PKey::private_key_from_pem(pem).map_err(|e| e.to_string())?;
        if key.rsa().is_err() {
            return Err("not an RSA key".into());
        }
        let rsa = OpensslRsa {
            key,
            contexts: parking_lot::Mutex::new(Vec::new()),
        };
        // Fail at load, not on the first message, if OpenSSL cannot sign.
        let context = rsa.context().map_err(|e| e.to_string())?;
        rsa.contexts.lock().push(context);
        Ok(rsa)
    }

    /// A signing context for PKCS#1 v1.5 over a SHA-256 digest.
    fn context(
        &self,
    ) -> Result<openssl::pkey_ctx::PkeyCtx<openssl::pkey::Private>, openssl::error::ErrorStack>
    {
        let mut context = openssl::pkey_ctx::PkeyCtx::new(&self.key)?;
        context.sign_init()?;
        context.set_rsa_padding(openssl::rsa::Padding::PKCS1)?;
        context.set_signature_md(openssl::md::Md::sha256())?;
        Ok(context)
    }

    /// The signature of a SHA-256 `digest`, with a pooled context.
    fn sign_digest(&self, digest: &[u8]) -> Result<Vec<u8>, openssl::error::ErrorStack> {
        let pooled = self.contexts.lock().pop();
        let mut context = match pooled {
            Some(context) => context,
            None => self.context()?,
        };
        let mut signature = vec![0; self.key.size()];
        let len = context.sign(digest, Some(&mut signature))?;
        signature.truncate(len);
        self.contexts.lock().push(context);
        Ok(signature)
    }
}

impl SigningKey for OpensslRsa {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        let mut hasher = openssl::sha::Sha256::new();
        input.write(&mut OpensslSha256(&mut hasher));
        self.sign_digest(&hasher.finish())
            .map_err(|e| mail_auth::Error::Crypto(CryptoError::Library(e.to_string())))
    }

    fn algorithm(&self) -> Algorithm {
        Algorithm::RsaSha256
    }
}

/// mail-auth's writer over OpenSSL's SHA-256 (the signed headers are
/// hashed as they are written, never gathered into a buffer).
struct OpensslSha256<'a>(&'a mut openssl::sha::Sha256);

impl mail_auth::common::headers::Writer for OpensslSha256<'_> {
    fn write(&mut self, buf: &[u8]) {
        self.0.update(buf);
    }
}

/// A new RSA-2048 DKIM key: its PKCS#8 PEM and its DNS TXT record text
/// (`v=DKIM1; k=rsa; p=...`), as the hosted service generates per domain.
pub fn generate_rsa_2048() -> Result<(String, String), String> {
    use base64::Engine;
    let rsa = openssl::rsa::Rsa::generate(2048).map_err(|e| e.to_string())?;
    let key = openssl::pkey::PKey::from_rsa(rsa).map_err(|e| e.to_string())?;
    let pem = key.private_key_to_pem_pkcs8().map_err(|e| e.to_string())?;
    let public = key.public_key_to_der().map_err(|e| e.to_string())?;
    let txt = format!(
        "v=DKIM1; k=rsa; p={}",
        base64::engine::general_purpose::STANDARD.encode(public)
    );
    Ok((String::from_utf8_lossy(&pem).into_owned(), txt))
}

enum Signer {
    Rsa(DkimSigner<OpensslRsa, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

/// Every key of every signing domain; each key of a domain signs.
#[derive(Default)]
pub struct Dkim {
    by_domain: HashMap<String, Vec<Signer>>,
}

fn load_key(key: &DkimKey, secrets: &SecretStore) -> Result<Signer, String> {
    let place = format!("DKIM key for {} ({})", key.domain, key.key);
    // A file, or a field in Vault; zeroized when dropped.
    let pem = key.key.read(secrets).map_err(|e| format!("{place}: {e}"))?;
    let selector = key
        .selector
        .resolve(secrets)
        .map_err(|e| format!("{place}: {e}"))?;
    let selector = selector
        .as_str()
        .map_err(|_| format!("{place}: the selector is not text"))?
        .trim()
        .to_string();
    let der = PrivateKeyDer::from_pem_slice(pem.expose())
        .map_err(|e| format!("{place}: not a PEM private key: {e}"))?;
    let signer = match key.algorithm {
        DkimAlgorithm::RsaSha256 => {
            let rsa = OpensslRsa::from_pem(pem.expose())
                .map_err(|e| format!("{place}: not an RSA key: {e}"))?;
            Signer::Rsa(signer(rsa, &key.domain, &selector))
        }
        DkimAlgorithm::Ed25519Sha256 => {
            let PrivateKeyDer::Pkcs8(pkcs8) = der else {
                return Err(format!("{place}: an Ed25519 key must be PKCS#8"));
            };
            let ed = Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8.secret_pkcs8_der())
                .map_err(|e| format!("{place}: not an Ed25519 key: {e}"))?;
            Signer::Ed25519(signer(ed, &key.domain, &selector))
        }
    };
    Ok(signer)
}

/// A signer of `domain` with `selector`: the headers we sign, relaxed
/// canonicalization of both header and body.
fn signer<T: SigningKey>(key: T, domain: &str, selector: &str) -> DkimSigner<T, Done> {
    DkimSigner::from_key(key)
        .domain(domain)
        .selector(selector)
        .headers(SIGNED_HEADERS)
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}

/// The domain DKIM signs for: the From: mailbox's domain as the strict
/// reader in [`crate::from_header`] reads it (the same reader the sender
/// policy uses), or `None` when the header block cannot be read.
pub fn from_domain(message: &[u8]) -> Option<String> {
    let head = crate::from_header::header_section(message);
    crate::from_header::sender_domain(head)
        .ok()
        .map(|mailbox| mailbox.domain)
}

impl Dkim {
    /// Keys from files only (a Vault reference is an error).
    pub fn load(keys: &[DkimKey]) -> Result<Dkim, String> {
        Self::load_with(keys, &SecretStore::default())
    }

    /// Keys from files or from Vault through `secrets`.
    pub fn load_with(keys: &[DkimKey], secrets: &SecretStore) -> Result<Dkim, String> {
        let mut by_domain: HashMap<String, Vec<Signer>> = HashMap::new();
        for key in keys {
            by_domain
                .entry(key.domain.to_ascii_lowercase())
                .or_default()
                .push(load_key(key, secrets)?);
        }
        Ok(Dkim { by_domain })
    }

    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }

    /// The DKIM-Signature headers (each with its CRLF, one per key of
    /// the From: domain, in config order) to put before `message`, or
    /// `None` when its From: domain has no key. CPU work: call it off the
    /// async workers.
    pub fn sign(&self, message: &[u8]) -> Option<Result<String, String>> {
        if self.by_domain.is_empty() {
            return None;
        }
        let domain = from_domain(message)?;
        let signers = self.by_domain.get(&domain)?;
        let mut headers = String::new();
        for signer in signers {
            let signature = match signer {
                Signer::Rsa(s) => s.sign(message),
                Signer::Ed25519(s) => s.sign(message),
            };
            match signature {
                Ok(signature) => headers.push_str(&signature.to_header()),
                Err(e) => return Some(Err(format!("DKIM signing for {domain} failed: {e}"))),
            }
        }
        Some(Ok(headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pooled contexts, used from several threads at once, make the same
    /// PKCS#1 v1.5 signature OpenSSL's one-shot signer makes (it is
    /// deterministic), and it verifies with the public key.
    #[test]
    fn pooled_rsa_contexts_sign_like_a_fresh_signer() {
        let (pem, _) = generate_rsa_2048().unwrap();
        let rsa = std::sync::Arc::new(OpensslRsa::from_pem(pem.as_bytes()).unwrap());
        let data = b"from:a@example.com\r\nsubject:x\r\n".to_vec();
        let mut fresh =
            openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &rsa.key).unwrap();
        fresh.update(&data).unwrap();
        let expected = fresh.sign_to_vec().unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (rsa, data) = (rsa.clone(), data.clone());
                std::thread::spawn(move || {
                    (0..8)
                        .map(|_| rsa.sign(&data[..]).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for thread in threads {
            for signature in thread.join().unwrap() {
                assert_eq!(signature, expected);
            }
        }
        let mut verifier =
            openssl::sign::Verifier::new(openssl::hash::MessageDigest::sha256(), &rsa.key).unwrap();
        verifier.update(&data).unwrap();
        assert!(verifier.verify(&expected).unwrap());
    }

    #[test]
    fn finds_the_from_domain() {
        assert_eq!(
            from_domain(b"Subject: x\r\nFrom: \"A, B\" <a@Example.COM>\r\n\r\nFrom: no@x.y\r\n"),
            Some("example.com".into())
        );
        assert_eq!(
            from_domain(b"from:\r\n  someone@news.example.org\r\nTo: t@x\r\n\r\n"),
            Some("news.example.org".into())
        );
        assert_eq!(from_domain(b"To: t@x\r\n\r\nFrom: a@b\r\n"), None);
        // What receivers read, or nothing: never the last `@` of the field.
        assert_eq!(
            from_domain(b"From: <boss@other.example> you@example.com\r\n\r\n"),
            None
        );
        assert_eq!(
            from_domain(b"From: a@example.com\r\nFrom: b@other.example\r\n\r\n"),
            None
        );
    }
}
