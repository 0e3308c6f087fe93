//! Reading TOML configuration files, shared by every role's configuration.
//!
//! The toml crate's messages already name the offending key and line; this adds the
//! file and folds them onto one line, so the CLI's one-line errors stay one line.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Messages include their cause (no `source`, so `{:#}` does not repeat it).
#[derive(Debug, thiserror::Error)]
pub enum TomlError {
    #[error("reading {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
}

pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, TomlError> {
    let text = std::fs::read_to_string(path).map_err(|cause| TomlError::Read {
        path: path.into(),
        cause,
    })?;
    parse_named(&text, path)
}

/// Parses configuration text that did not come from a file.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, TomlError> {
    parse_named(text, Path::new("<config>"))
}

fn parse_named<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, TomlError> {
    toml::from_str(text).map_err(|e| TomlError::Parse {
        path: path.into(),
        message: e.to_string().trim_end().replace('\n', " "),
    })
}
