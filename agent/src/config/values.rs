//! The rules of single values: names, absolute paths, integers in a range, the format version.
//!
//! Each rule returns the value, or the message of its problem (what is wrong, what was expected).

use std::ops::RangeInclusive;
use std::path::PathBuf;

use super::yaml::{Node, Scalar, Value};

/// Longest site or volume name.
pub(super) const NAME_MAX: usize = 32;

/// A site or volume name: 1 to [`NAME_MAX`] of `a-z`, `0-9`, `-`, starting with a letter.
pub(super) fn name(node: &Node) -> Result<String, String> {
    let Some(name) = node.as_str() else {
        return Err(format!("expected a name, found {}", node.describe()));
    };
    let length = name.chars().count();
    let reason = if name.is_empty() {
        "empty name".to_owned()
    } else if length > NAME_MAX {
        format!("invalid name `{name}` ({length} characters)")
    } else if let Some(bad) = name
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-'))
    {
        format!("invalid name `{name}` (`{bad}` is not allowed)")
    } else if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        format!("invalid name `{name}` (it does not start with a letter)")
    } else {
        return Ok(name.to_owned());
    };
    Err(format!(
        "{reason}, expected 1 to {NAME_MAX} characters from `a-z`, `0-9` and `-`, starting with a letter"
    ))
}

/// An absolute path (whether it exists is checked by the agent when it starts).
pub(super) fn absolute_path(node: &Node) -> Result<PathBuf, String> {
    match node.as_str() {
        Some(path) if path.contains('\0') => {
            Err("expected an absolute path, found a string with a NUL character".into())
        }
        Some(path) if path.starts_with('/') => Ok(PathBuf::from(path)),
        Some("") => Err("expected an absolute path, found an empty string".into()),
        Some(path) => Err(format!("expected an absolute path, found `{path}`")),
        None => Err(format!(
            "expected an absolute path, found {}",
            node.describe()
        )),
    }
}

/// An integer within `range`.
pub(super) fn int(node: &Node, range: RangeInclusive<u64>) -> Result<u64, String> {
    let (text, value) = match &node.value {
        Value::Scalar(text, Scalar::Int(value)) => (text, *value),
        Value::Scalar(text, Scalar::Quoted) if text.parse::<i128>().is_ok() => {
            return Err(format!(
                "expected an integer, found the string `{text}` (remove the quotes)"
            ));
        }
        _ => return Err(format!("expected an integer, found {}", node.describe())),
    };
    match value.and_then(|v| u64::try_from(v).ok()) {
        Some(v) if range.contains(&v) => Ok(v),
        _ if range.start() == range.end() => {
            Err(format!("must be {}, found {text}", range.start()))
        }
        _ => Err(format!(
            "must be between {} and {}, found {text}",
            range.start(),
            range.end()
        )),
    }
}

/// The message for a file of version `found` (written `text`) when this vfsdr reads `reads`.
pub(super) fn unsupported_version(text: &str, found: Option<i128>, reads: u32) -> String {
    let not_read =
        format!("version {text} is not supported by this vfsdr (it reads version {reads})");
    match found {
        Some(v) if v > reads.into() => {
            format!("{not_read}; the file was written for a newer vfsdr")
        }
        Some(v) if v >= 1 => {
            format!("{not_read}; it is an older format: rewrite the file as version {reads}")
        }
        _ => format!("expected a version number (this vfsdr reads version {reads}), found {text}"),
    }
}
