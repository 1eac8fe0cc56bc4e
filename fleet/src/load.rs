//! Reading the fleet file: every problem, each with its line and key.

use std::fmt;
use std::path::Path;

use crate::locate::{KeyPath, Locator};
use crate::model::Fleet;
use crate::validate::validate;

/// One thing wrong with a config file, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.key.is_empty()) {
            (Some(line), false) => write!(f, "line {line}: {}: {}", self.key, self.message),
            (Some(line), true) => write!(f, "line {line}: {}", self.message),
            (None, false) => write!(f, "{}: {}", self.key, self.message),
            (None, true) => write!(f, "{}", self.message),
        }
    }
}

/// Every problem found in one file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        write!(
            f,
            "{} has {count} problem{}:",
            self.file,
            if count == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            write!(f, "\n  {}", self.file)?;
            if let Some(line) = problem.line {
                write!(f, ":{line}")?;
            }
            if !problem.key.is_empty() {
                write!(f, ": {}", problem.key)?;
            }
            write!(f, ": {}", problem.message)?;
        }
        Ok(())
    }
}

impl ConfigError {
    pub fn single(file: &str, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_string(),
            problems: vec![Problem {
                line: None,
                key: String::new(),
                message: message.into(),
            }],
        }
    }
}

/// Reads and validates a fleet file.
pub fn load_fleet(path: &Path) -> Result<Fleet, ConfigError> {
    let text = read_text(path)?;
    parse_fleet(&text, &path.display().to_string())
}

pub(crate) fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigError::single(&path.display().to_string(), format!("cannot be read: {e}"))
    })
}

/// Parses and validates fleet-file text; `file` names it in errors.
pub fn parse_fleet(text: &str, file: &str) -> Result<Fleet, ConfigError> {
    let (fleet, mut problems) = deserialize_collecting::<Fleet>(text);
    // A file whose bad entries were blanked out still gets the cross-field
    // checks, so one run names every problem.
    if let Some(fleet) = &fleet {
        problems.extend(validate(fleet, &Locator::new(text)));
    }
    match fleet {
        Some(fleet) if problems.is_empty() => Ok(fleet),
        _ => Err(ConfigError {
            file: file.to_string(),
            problems,
        }),
    }
}

/// Deserializes `text`, collecting every field-level error rather than the
/// first: a bad entry is reported, blanked out, and parsing goes on.
pub(crate) fn deserialize_collecting<T: serde::de::DeserializeOwned>(
    text: &str,
) -> (Option<T>, Vec<Problem>) {
    const MAX_PROBLEMS: usize = 64;
    let locator = Locator::new(text);
    let mut working = text.to_string();
    let mut problems = Vec::new();
    while problems.len() < MAX_PROBLEMS {
        let err = match toml::from_str::<T>(&working) {
            Ok(value) => return (Some(value), problems),
            Err(err) => err,
        };
        let path = err.span().and_then(|s| locator.path_at(s.start));
        problems.push(Problem {
            line: err.span().map(|s| locator.line_of(s.start)),
            key: path.as_ref().map(KeyPath::to_string).unwrap_or_default(),
            message: err.message().trim().to_string(),
        });
        match path.and_then(|p| locator.entry_span(&p)) {
            Some(span) if working.get(span.clone()).is_some() => blank(&mut working, span),
            _ => break,
        }
    }
    (None, problems)
}

/// Overwrites a byte range with spaces, keeping newlines so lines stay put.
fn blank(text: &mut String, span: std::ops::Range<usize>) {
    let replaced: String = text[span.clone()]
        .chars()
        .map(|c| match c {
            '\n' => "\n".to_string(),
            other => " ".repeat(other.len_utf8()),
        })
        .collect();
    text.replace_range(span, &replaced);
}
