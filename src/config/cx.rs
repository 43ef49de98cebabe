//! The file being checked and the errors found in it so far: what the raw
//! tables (`raw.rs`) and the checks (`check.rs`) both record into.

use std::cell::RefCell;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::{Config, ConfigError, ConfigErrors, Loaded, Warning};

/// The file being checked and what was found wrong with it so far.
pub(crate) struct Cx<'a> {
    pub(super) file: &'a Path,
    pub(super) src: &'a str,
    /// `$CREDENTIALS_DIRECTORY`, when systemd set it.
    pub(super) credentials: Option<PathBuf>,
    pub(super) errors: RefCell<Vec<ConfigError>>,
    pub(super) warnings: RefCell<Vec<Warning>>,
    /// Whether the files a run reads (role_id, CA, client certificate)
    /// must exist now; not for `vaultlet policy` and `vaultlet import`,
    /// which come before they are provisioned.
    pub(super) provisioned: bool,
}

impl<'a> Cx<'a> {
    pub fn new(file: &'a Path, src: &'a str, credentials: Option<PathBuf>) -> Self {
        Cx { file, src, credentials, errors: RefCell::default(), warnings: RefCell::default(), provisioned: true }
    }

    /// Everything found: the errors, in file order, or the warnings.
    pub fn finish(self, config: Option<Config>) -> Result<Loaded, ConfigErrors> {
        let mut errors = self.errors.into_inner();
        match config {
            Some(config) if errors.is_empty() => Ok(Loaded { config, warnings: self.warnings.into_inner() }),
            _ => {
                // Stable: errors on one line keep the order they were found in.
                errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
                Err(ConfigErrors(errors))
            }
        }
    }

    fn line(&self, offset: usize) -> usize {
        self.src[..offset.min(self.src.len())].matches('\n').count() + 1
    }

    /// An error at `span` (`0..0`: no line) under `key`.
    pub fn error(&self, span: Range<usize>, key: &str, msg: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line: (span != (0..0)).then(|| self.line(span.start)),
            key: key.to_owned(),
            message: msg.into(),
        }
    }

    pub fn push(&self, e: ConfigError) {
        self.errors.borrow_mut().push(e);
    }

    /// Records an error; `None`, for `?` and `and_then`.
    pub(crate) fn err<T>(&self, span: Range<usize>, key: &str, msg: impl Into<String>) -> Option<T> {
        self.push(self.error(span, key, msg));
        None
    }

    pub(super) fn warn(&self, key: &str, message: String) {
        self.warnings.borrow_mut().push(Warning { key: key.to_owned(), message });
    }

    /// Keeps toml's message (it names the problem, e.g. "unknown field `x`,
    /// expected one of …") but not its excerpt of the offending line.
    pub fn toml_err(&self, e: &toml::de::Error, key: &str) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line: e.span().map(|s| self.line(s.start)),
            key: key.to_owned(),
            message: e.message().trim().replace('\n', " "),
        }
    }
}
