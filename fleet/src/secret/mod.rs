//! Secrets in configs: written in place (a value, or a file's path) or as a
//! Vault reference `vault:<mount>/data/<path>#<field>` read through the KV v2
//! API (see [`crate::vault`]). Values are kept in [`SecretBytes`], which
//! zeroizes on drop and never prints.
//!
//! Three field types, by what a plain value means:
//! - [`SecretRef`]: the plain value is the secret itself (tokens, webhook
//!   signing secrets); [`SecretRef::resolve`] gives its bytes.
//! - [`SecretFile`]: the plain value is a file holding it (DKIM keys);
//!   [`SecretFile::read`] gives its bytes.
//! - [`Secret<T>`]: a validated value such as a password hash; resolved in
//!   place at load by [`Secret::resolve`].

mod metrics;
mod store;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

pub use metrics::register_metrics;
pub use store::{
    forbid_core_dumps, refresh_loop, watch, EntryMetrics, MetricsSnapshot, ReadStatus, SecretStore,
    StoreStatus,
};

/// Bytes of a secret: zeroized on drop, redacted when printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretBytes(Zeroizing::new(bytes))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The secret as text, for values that are text (hashes, tokens, PEM).
    pub fn as_str(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.0)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBytes(<redacted>)")
    }
}

/// `vault:<mount>/data/<path>#<field>`: one field of a KV v2 secret.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VaultRef {
    pub mount: String,
    pub path: String,
    pub field: String,
}

pub const VAULT_PREFIX: &str = "vault:";

impl VaultRef {
    /// Parses `vault:<mount>/data/<path>#<field>`; the error says what is
    /// wrong with the reference (a reference holds no secret).
    pub fn parse(text: &str) -> Result<VaultRef, String> {
        let shape = "a Vault reference is `vault:<mount>/data/<path>#<field>`, \
                     e.g. `vault:secret/data/dkim/example.com#private_key`";
        let rest = text
            .strip_prefix(VAULT_PREFIX)
            .ok_or_else(|| format!("`{text}` does not start with `vault:`; {shape}"))?;
        let (location, field) = rest
            .rsplit_once('#')
            .ok_or_else(|| format!("`{text}` names no field after `#`; {shape}"))?;
        let (mount, path) = location
            .split_once("/data/")
            .ok_or_else(|| format!("`{text}` has no `/data/` after the mount; {shape}"))?;
        let part_ok = |part: &str| {
            !part.is_empty()
                && part.len() <= 512
                && part
                    .split('/')
                    .all(|s| !s.is_empty() && s != "." && s != "..")
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./@+=,".contains(c))
        };
        if !part_ok(mount) || !part_ok(path) {
            return Err(format!(
                "`{text}`: mount and path must be non-empty segments of letters, digits \
                 and `-_.@+=,` separated by `/`; {shape}"
            ));
        }
        if field.is_empty()
            || field.len() > 256
            || !field.chars().all(|c| c.is_ascii_graphic() && c != '#')
        {
            return Err(format!(
                "`{text}`: the field after `#` must be printable ASCII without spaces; {shape}"
            ));
        }
        Ok(VaultRef {
            mount: mount.to_string(),
            path: path.to_string(),
            field: field.to_string(),
        })
    }

    /// True when `text` is meant as a Vault reference.
    pub fn is_reference(text: &str) -> bool {
        text.starts_with(VAULT_PREFIX)
    }
}

impl fmt::Display for VaultRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vault:{}/data/{}#{}", self.mount, self.path, self.field)
    }
}

impl fmt::Debug for VaultRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VaultRef({self})")
    }
}

impl<'de> Deserialize<'de> for VaultRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        VaultRef::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for VaultRef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A secret whose plain form is the value itself.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    Vault(VaultRef),
    Value(SecretBytes),
}

impl SecretRef {
    /// The secret's bytes: the plain value, or the field read from Vault.
    pub fn resolve(&self, store: &SecretStore) -> Result<SecretBytes, String> {
        match self {
            SecretRef::Value(value) => Ok(value.clone()),
            SecretRef::Vault(reference) => store.read(reference),
        }
    }

    pub fn vault_ref(&self) -> Option<&VaultRef> {
        match self {
            SecretRef::Vault(reference) => Some(reference),
            SecretRef::Value(_) => None,
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Vault(reference) => write!(f, "SecretRef({reference})"),
            SecretRef::Value(_) => f.write_str("SecretRef(<redacted>)"),
        }
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Zeroizing::new(String::deserialize(deserializer)?);
        if VaultRef::is_reference(&text) {
            return VaultRef::parse(&text)
                .map(SecretRef::Vault)
                .map_err(serde::de::Error::custom);
        }
        Ok(SecretRef::Value(SecretBytes::new(text.as_bytes().to_vec())))
    }
}

/// A secret whose plain form is the path of a file holding it (relative to
/// the config file once [`SecretFile::resolve_path`] ran).
#[derive(Clone, PartialEq, Eq)]
pub enum SecretFile {
    Vault(VaultRef),
    Path(PathBuf),
}

impl SecretFile {
    pub fn resolve_path(&mut self, config_file: &Path) {
        if let SecretFile::Path(path) = self {
            *path = crate::config::resolve(config_file, path);
        }
    }

    /// The file's bytes, or the field read from Vault.
    pub fn read(&self, store: &SecretStore) -> Result<SecretBytes, String> {
        match self {
            SecretFile::Path(path) => std::fs::read(path)
                .map(SecretBytes::new)
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
            SecretFile::Vault(reference) => store.read(reference),
        }
    }

    pub fn vault_ref(&self) -> Option<&VaultRef> {
        match self {
            SecretFile::Vault(reference) => Some(reference),
            SecretFile::Path(_) => None,
        }
    }
}

impl fmt::Display for SecretFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretFile::Vault(reference) => write!(f, "{reference}"),
            SecretFile::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

impl fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretFile({self})")
    }
}

impl<'de> Deserialize<'de> for SecretFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if VaultRef::is_reference(&text) {
            return VaultRef::parse(&text)
                .map(SecretFile::Vault)
                .map_err(serde::de::Error::custom);
        }
        Ok(SecretFile::Path(PathBuf::from(text)))
    }
}

impl Serialize for SecretFile {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A validated secret value (`T: TryFrom<String>` checks it), written in
/// place or as a Vault reference. A reference holds no value until
/// [`Secret::resolve`] reads and checks it.
#[derive(Clone, PartialEq)]
pub struct Secret<T> {
    reference: Option<VaultRef>,
    value: Option<T>,
}

impl<T> Secret<T> {
    pub fn plain(value: T) -> Self {
        Secret {
            reference: None,
            value: Some(value),
        }
    }

    pub fn vault(reference: VaultRef) -> Self {
        Secret {
            reference: Some(reference),
            value: None,
        }
    }

    /// The value; `None` only for a reference not resolved yet.
    pub fn value(&self) -> Option<&T> {
        self.value.as_ref()
    }

    pub fn vault_ref(&self) -> Option<&VaultRef> {
        self.reference.as_ref()
    }
}

impl<T: TryFrom<String, Error = String>> Secret<T> {
    /// Reads a referenced value from `store` and checks it; plain values
    /// are left as they are. The error names the reference, never the value.
    pub fn resolve(&mut self, store: &SecretStore) -> Result<(), String> {
        let Some(reference) = &self.reference else {
            return Ok(());
        };
        let bytes = store.read(reference)?;
        let text = bytes
            .as_str()
            .map_err(|_| format!("{reference}: the value is not UTF-8 text"))?;
        let value = T::try_from(text.trim().to_string())
            .map_err(|message| format!("{reference}: {message}"))?;
        self.value = Some(value);
        Ok(())
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            Some(reference) => write!(f, "Secret({reference})"),
            None => f.write_str("Secret(<redacted>)"),
        }
    }
}

impl<'de, T: TryFrom<String, Error = String>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if VaultRef::is_reference(&text) {
            return VaultRef::parse(&text)
                .map(Secret::vault)
                .map_err(serde::de::Error::custom);
        }
        T::try_from(text)
            .map(Secret::plain)
            .map_err(serde::de::Error::custom)
    }
}

impl<T: Clone + Into<String>> Serialize for Secret<T> {
    /// The reference as written, or the plain value.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match (&self.reference, &self.value) {
            (Some(reference), _) => serializer.collect_str(reference),
            (None, Some(value)) => serializer.serialize_str(&value.clone().into()),
            (None, None) => serializer.serialize_str(""),
        }
    }
}

/// A text setting that may be written as a reference: replaced in place by
/// the (trimmed) text Vault holds. Plain text is left as it is.
pub fn resolve_text(text: &mut String, store: &SecretStore) -> Result<(), String> {
    if !VaultRef::is_reference(text) {
        return Ok(());
    }
    let reference = VaultRef::parse(text)?;
    let value = store.read(&reference)?;
    let value = value
        .as_str()
        .map_err(|_| format!("{reference}: the value is not UTF-8 text"))?;
    *text = value.trim().to_string();
    Ok(())
}

/// 64 hex digits: a sha256 as the configs hold token hashes.
pub fn is_sha256_hex(text: &str) -> bool {
    let text = text.trim();
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Reads the accounts' `token_sha256` written as references (healthd, the
/// only reader of accounts); every problem with its key.
pub fn resolve_account_tokens(
    fleet: &mut crate::Fleet,
    store: &SecretStore,
) -> Vec<crate::Problem> {
    let mut problems = Vec::new();
    for (i, account) in fleet.accounts.iter_mut().enumerate() {
        let key = format!("accounts[{i}].token_sha256");
        let result = resolve_text(&mut account.token_sha256, store).and_then(|()| {
            is_sha256_hex(&account.token_sha256)
                .then_some(())
                .ok_or_else(|| "the value read is not 64 hex digits (a sha256)".to_string())
        });
        if let Err(message) = result {
            problems.push(crate::Problem {
                line: None,
                key,
                message,
            });
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_print_back() {
        let text = "vault:secret/data/dkim/example.com#private_key";
        let parsed = VaultRef::parse(text).unwrap();
        assert_eq!(parsed.mount, "secret");
        assert_eq!(parsed.path, "dkim/example.com");
        assert_eq!(parsed.field, "private_key");
        assert_eq!(parsed.to_string(), text);
        let nested = VaultRef::parse("vault:kv/prod/data/a/data/b#f").unwrap();
        assert_eq!(
            (nested.mount.as_str(), nested.path.as_str()),
            ("kv/prod", "a/data/b")
        );
    }

    #[test]
    fn malformed_references_are_refused_with_the_shape() {
        for bad in [
            "vault:",
            "vault:secret/dkim#k",
            "vault:secret/data/#k",
            "vault:/data/x#k",
            "vault:secret/data/x",
            "vault:secret/data/x#",
            "vault:secret/data/x#a b",
            "vault:secret/data/../x#k",
            "vault:secret/data/x//y#k",
            "vault:secret/data/x?y=1#k",
            "vault:se cret/data/x#k",
        ] {
            let error = VaultRef::parse(bad).unwrap_err();
            assert!(
                error.contains("vault:<mount>/data/<path>#<field>"),
                "{bad}: {error}"
            );
        }
        let long = format!("vault:secret/data/{}#k", "a".repeat(600));
        assert!(VaultRef::parse(&long).is_err());
    }

    #[test]
    fn plain_values_keep_their_meaning_and_never_print() {
        #[derive(Deserialize, Debug)]
        struct Config {
            token: SecretRef,
            key: SecretFile,
        }
        let config: Config = toml::from_str("token = \"hunter2\"\nkey = \"dkim/a.pem\"").unwrap();
        assert_eq!(
            config.token,
            SecretRef::Value(SecretBytes::new(b"hunter2".to_vec()))
        );
        assert_eq!(config.key, SecretFile::Path("dkim/a.pem".into()));
        assert!(!format!("{config:?}").contains("hunter2"));
        let config: Config =
            toml::from_str("token = \"vault:secret/data/t#v\"\nkey = \"vault:secret/data/k#pem\"")
                .unwrap();
        assert!(matches!(config.token, SecretRef::Vault(_)));
        assert_eq!(config.key.to_string(), "vault:secret/data/k#pem");
    }
}
