//! The site configuration: loading and validating `/etc/vfsdr/vfsdr.yaml` (format version
//! [`VERSION`]), and the VFS definitions in it.
//!
//! [`load`] and [`parse`] either return a complete [`Config`] or a [`ConfigError`] that lists
//! every problem of the file, each with its line, column and field, and what was expected.
//! An optional field that is left out or left empty (null) takes its default.
//! Whether devices, images and links exist is not checked here: the agent checks that when it
//! starts, and the precheck before a VFS moves.
//!
//! [`parse_vfs_file`] reads one VFS definition on its own; [`VfsDef::validate`] applies the same
//! rules to a definition that did not come from YAML (from a peer, as JSON). The rules of values
//! live in `values.rs` and `units.rs`, shared by both.

mod check;
mod decode;
mod decode_replication;
mod decode_site;
mod decode_vfs;
mod model;
mod scalars;
#[cfg(test)]
mod tests;
mod units;
mod values;
mod vfs;
mod yaml;

use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

pub use model::*;

/// Default of [`Config::state_dir`].
pub const DEFAULT_STATE_DIR: &str = "/var/lib/vfsdr";
/// Default of [`Config::runtime_dir`].
pub const DEFAULT_RUNTIME_DIR: &str = "/run/vfsdr";
/// Default of [`Resources::mount_root`].
pub const DEFAULT_MOUNT_ROOT: &str = "/srv/vfsdr/mnt";
/// Default of [`Tracking::poll_interval_ms`].
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 200;
/// Allowed values of [`Tracking::poll_interval_ms`].
pub const POLL_INTERVAL_MS: RangeInclusive<u64> = 10..=10_000;
/// Default of [`Tracking::top_writers`].
pub const DEFAULT_TOP_WRITERS: usize = 10;
/// Allowed values of [`Tracking::top_writers`].
pub const TOP_WRITERS: RangeInclusive<u64> = 1..=100;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration; `problems` is never empty.
    #[error("{}", InvalidDisplay { path, problems })]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

/// One problem of a configuration file.
///
/// Its `Display` is `LINE:COLUMN: FIELD: MESSAGE`; [`ConfigError::Invalid`] puts the file in front.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// Where in the configuration: `volumes[1].image`, `vfs[0].volumes[1].size`, or
    /// `(document)` for problems about the whole file (YAML syntax, no content). In a VFS file
    /// ([`parse_vfs_file`]) fields are relative to the definition: `volumes[1].size`.
    pub field: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.line, self.column, self.field, self.message
        )
    }
}

/// One line per problem: `FILE:LINE:COLUMN: FIELD: MESSAGE`.
struct InvalidDisplay<'a> {
    path: &'a Path,
    problems: &'a [Problem],
}

impl fmt::Display for InvalidDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{problem}", self.path.display())?;
        }
        Ok(())
    }
}

/// Reads and validates the configuration file at `path`.
///
/// # Errors
/// [`ConfigError::Read`] if the file cannot be read (or is not UTF-8), [`ConfigError::Invalid`]
/// with every problem found if it is not a valid configuration.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Validates configuration `text`; `origin` is the file named in the problems.
///
/// # Errors
/// [`ConfigError::Invalid`] with every problem found, in file order.
pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    let invalid = |problems| ConfigError::Invalid {
        path: origin.to_owned(),
        problems,
    };
    let root = yaml::parse(text).map_err(|problem| invalid(vec![problem]))?;
    decode::decode(root.as_ref()).map_err(invalid)
}

/// Reads and validates a file holding one VFS definition, written as an item of `vfs:` in the
/// configuration (as `vfsdr precheck VFS --for change FILE` reads it).
///
/// The definition is checked on its own: its replication peer by the name rules only, mounts
/// against each other only, and mounts left out default under [`DEFAULT_MOUNT_ROOT`].
///
/// # Errors
/// As [`load`], with fields relative to the definition (`volumes[0].size`).
pub fn parse_vfs_file(path: &Path) -> Result<VfsDef, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_vfs(&text, path)
}

/// Validates the VFS definition `text` as [`parse_vfs_file`] does; `origin` is the file named in
/// the problems.
///
/// # Errors
/// [`ConfigError::Invalid`] with every problem found, in file order.
pub fn parse_vfs(text: &str, origin: &Path) -> Result<VfsDef, ConfigError> {
    let invalid = |problems| ConfigError::Invalid {
        path: origin.to_owned(),
        problems,
    };
    let root = yaml::parse(text).map_err(|problem| invalid(vec![problem]))?;
    decode_vfs::decode(root.as_ref()).map_err(invalid)
}
