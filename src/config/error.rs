//! Config errors: what went wrong, and where in the file.
//!
//! An invalid file yields every problem found, each printed like a compiler diagnostic:
//! `FILE:LINE:COLUMN: FIELD_PATH: MESSAGE`, so editors and humans can jump to it.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, permissions, not UTF-8).
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file we tried to read.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The file was read but is not a valid config. Displayed one error per line.
    #[error("{}", Diagnostics { path, errors })]
    Invalid {
        /// The file, as given by the caller; every line of the message starts with it.
        path: PathBuf,
        /// Every problem found, in file order where known. Never empty.
        errors: Vec<FieldError>,
    },
}

/// One problem in the config file, with its place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// 1-based line of the offending value (or of its nearest existing parent); `None` when
    /// the place could not be found.
    pub line: Option<usize>,
    /// 1-based column, as `line`.
    pub column: Option<usize>,
    /// The field path, e.g. `routes[2].match.path_prefix`; empty for the whole file.
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

// === impl FieldError ===

impl fmt::Display for FieldError {
    /// `LINE:COLUMN: FIELD_PATH: MESSAGE`; the parts that are unknown are left out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, "{line}:{column}: ")?,
            (Some(line), None) => write!(f, "{line}: ")?,
            _ => {}
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

// === impl Diagnostics ===

/// Renders [`ConfigError::Invalid`]: `FILE:` in front of each error, one per line.
struct Diagnostics<'a> {
    path: &'a PathBuf,
    errors: &'a [FieldError],
}

impl fmt::Display for Diagnostics<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            let sep = if error.line.is_some() { ":" } else { ": " };
            write!(f, "{}{sep}{error}", self.path.display())?;
        }
        Ok(())
    }
}
