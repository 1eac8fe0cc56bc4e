//! Loading a daemon's own config file, with the same located errors as the
//! fleet file, and resolving the paths it names.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::load::{deserialize_collecting, read_text, ConfigError};

/// Reads a daemon config file; every problem carries its line and key.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = read_text(path)?;
    parse_toml(&text, &path.display().to_string())
}

pub fn parse_toml<T: DeserializeOwned>(text: &str, file: &str) -> Result<T, ConfigError> {
    match deserialize_collecting::<T>(text) {
        (Some(value), problems) if problems.is_empty() => Ok(value),
        (_, problems) => Err(ConfigError {
            file: file.to_string(),
            problems,
        }),
    }
}

/// A path named in a config file, taken relative to that file's folder.
pub fn resolve(config_file: &Path, named: &Path) -> PathBuf {
    if named.is_absolute() {
        named.to_path_buf()
    } else {
        config_file
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(named)
    }
}

/// Serde for durations written as `500ms`, `2s`, `20m`, `7d`.
pub mod duration {
    use std::time::Duration;

    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Written back as humantime does (`500ms`, `1m 30s`).
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*value).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(|e| {
            D::Error::custom(format!(
                "`{text}` is not a duration such as 500ms, 2s or 20m: {e}"
            ))
        })
    }
}
