//! The library's one error type. Every message says what was expected, what was found and where
//! (file, row, column, tensor, layer …), so a user can fix the input without reading the code.
//!
//! May import: nothing of this crate (the bottom layer, with `paths` and `progress`).

use std::path::PathBuf;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An input file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file was read but its content is not what the format requires.
    /// `location` is a human-readable position such as "row 12, column `onset_s`" or "line 40".
    #[error("{path}: {location}: {message}")]
    Parse {
        path: PathBuf,
        location: String,
        message: String,
    },

    /// The input is well-formed but unusable (empty story, layer out of range, shape mismatch …).
    #[error("invalid input: {0}")]
    Invalid(String),

    /// A model file (GGUF, ONNX, manifest) is unsupported or inconsistent.
    #[error("model: {0}")]
    Model(String),

    /// ONNX Runtime could not be found or failed.
    #[error("ONNX Runtime: {0}")]
    Runtime(String),

    /// Writing an output table failed.
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn parse(path: impl Into<PathBuf>, location: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Parse {
            path: path.into(),
            location: location.into(),
            message: message.into(),
        }
    }
}
