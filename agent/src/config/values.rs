//! The rules of single values: names, paths, mounts, duplicates, the format version; those of
//! quantities and addresses are in [`super::units`].
//!
//! They work on text and typed values, not on YAML nodes, so that the decoder (through
//! [`super::scalars`]) and [`super::VfsDef::validate`] apply the same rules. Each returns the
//! value, or the message of its problem: what is wrong, then what was expected.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::{Component, Path, PathBuf};

/// Longest site, volume, network or peer name.
pub(super) const NAME_MAX: usize = 32;
/// Longest VFS name: link names derived from it must fit the kernel's 15 characters.
pub(super) const VFS_NAME_MAX: usize = 11;
/// Longest kernel link name (`IFNAMSIZ` - 1).
pub(super) const LINK_NAME_MAX: usize = 15;
/// Longest NetBIOS name.
pub(super) const NETBIOS_NAME_MAX: usize = 15;
/// Longest SMB share name.
pub(super) const SHARE_NAME_MAX: usize = 80;
/// Characters SMB share names cannot hold (control characters neither).
pub(super) const SHARE_NAME_FORBIDDEN: &str = "/\\[]:|<>+=;,*?\"";
/// Share names that are sections of their own in `smb.conf` (compared ignoring case).
pub(super) const SHARE_NAME_RESERVED: &[&str] = &["global", "homes", "printers", "ipc$"];

/// A site, volume, network or peer name: 1 to [`NAME_MAX`] of `a-z`, `0-9`, `-`, starting with
/// a letter.
pub(super) fn name(name: &str) -> Result<(), String> {
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
        return Ok(());
    };
    Err(format!(
        "{reason}, expected 1 to {NAME_MAX} characters from `a-z`, `0-9` and `-`, starting with a letter"
    ))
}

/// A VFS name: a [`name`] of at most [`VFS_NAME_MAX`] characters.
pub(super) fn vfs_name(vfs: &str) -> Result<(), String> {
    name(vfs)?;
    let length = vfs.chars().count();
    if length > VFS_NAME_MAX {
        return Err(format!(
            "VFS name `{vfs}` is too long ({length} characters), expected at most \
             {VFS_NAME_MAX} so that the link names derived from it fit the kernel's 15"
        ));
    }
    Ok(())
}

/// A kernel link name: 1 to [`LINK_NAME_MAX`] bytes, no `/`, `:` or whitespace, not `.` or `..`.
pub(super) fn link_name(link: &str) -> Result<(), String> {
    let reason = if link.is_empty() {
        "empty link name".to_owned()
    } else if link.len() > LINK_NAME_MAX {
        format!("invalid link name `{link}` ({} bytes)", link.len())
    } else if let Some(bad) = link
        .chars()
        .find(|c| matches!(c, '/' | ':') || c.is_whitespace() || c.is_control())
    {
        format!(
            "invalid link name `{link}` (`{}` is not allowed)",
            bad.escape_debug()
        )
    } else if link == "." || link == ".." {
        format!("invalid link name `{link}`")
    } else {
        return Ok(());
    };
    Err(format!(
        "{reason}, expected a kernel link name such as `eth0`: 1 to {LINK_NAME_MAX} characters, \
         without `/`, `:` or whitespace"
    ))
}

/// A NetBIOS name: 1 to [`NETBIOS_NAME_MAX`] of `A-Z`, `0-9`, `-`.
pub(super) fn netbios_name(netbios: &str) -> Result<(), String> {
    let length = netbios.chars().count();
    let reason = if netbios.is_empty() {
        "empty NetBIOS name".to_owned()
    } else if length > NETBIOS_NAME_MAX {
        format!("invalid NetBIOS name `{netbios}` ({length} characters)")
    } else if let Some(bad) = netbios.chars().find(char::is_ascii_lowercase) {
        format!(
            "invalid NetBIOS name `{netbios}` (`{bad}` is lower case: write `{}`)",
            netbios.to_ascii_uppercase()
        )
    } else if let Some(bad) = netbios
        .chars()
        .find(|c| !matches!(c, 'A'..='Z' | '0'..='9' | '-'))
    {
        format!("invalid NetBIOS name `{netbios}` (`{bad}` is not allowed)")
    } else {
        return Ok(());
    };
    Err(format!(
        "{reason}, expected 1 to {NETBIOS_NAME_MAX} characters from `A-Z`, `0-9` and `-`"
    ))
}

/// An SMB share name: 1 to [`SHARE_NAME_MAX`] characters, none of [`SHARE_NAME_FORBIDDEN`] or
/// control characters, no space at either end, not one of [`SHARE_NAME_RESERVED`].
pub(super) fn share_name(share: &str) -> Result<(), String> {
    let length = share.chars().count();
    let reason = if share.is_empty() {
        "empty share name".to_owned()
    } else if length > SHARE_NAME_MAX {
        format!("invalid share name `{share}` ({length} characters)")
    } else if let Some(bad) = share
        .chars()
        .find(|c| SHARE_NAME_FORBIDDEN.contains(*c) || c.is_control())
    {
        format!(
            "invalid share name `{share}` (`{}` is not allowed)",
            bad.escape_debug()
        )
    } else if share.trim() != share {
        format!("invalid share name `{share}` (it starts or ends with a space)")
    } else if let Some(reserved) = SHARE_NAME_RESERVED
        .iter()
        .find(|r| r.eq_ignore_ascii_case(share))
    {
        format!("share name `{share}` is reserved (`[{reserved}]` is a section of smb.conf)")
    } else {
        return Ok(());
    };
    let forbidden: Vec<String> = SHARE_NAME_FORBIDDEN
        .chars()
        .map(|c| format!("`{c}`"))
        .collect();
    Err(format!(
        "{reason}, expected 1 to {SHARE_NAME_MAX} characters without {}",
        forbidden.join(" ")
    ))
}

/// A directory inside a volume: empty for its root, else relative, without `.`, `..` or empty
/// components.
pub(super) fn share_path(path: &str) -> Result<(), String> {
    let expected = "expected a directory relative to the volume root, such as `projects/2024` \
                    (or an empty string for the root)";
    if path.is_empty() {
        return Ok(());
    }
    let reason = if path.contains('\0') {
        "a path with a NUL character".to_owned()
    } else if path.starts_with('/') {
        format!("`{path}` starts with `/`")
    } else if path.split('/').any(|c| c == "..") {
        format!("`{path}` goes up with `..`")
    } else if path.split('/').any(|c| c.is_empty() || c == ".") {
        format!("`{path}` has an empty or `.` component")
    } else {
        return Ok(());
    };
    Err(format!("{reason}, {expected}"))
}

/// An absolute path (whether it exists is checked by the agent when it starts).
pub(super) fn absolute_path(path: &str) -> Result<PathBuf, String> {
    if path.contains('\0') {
        Err("expected an absolute path, found a string with a NUL character".into())
    } else if path.starts_with('/') {
        Ok(PathBuf::from(path))
    } else if path.is_empty() {
        Err("expected an absolute path, found an empty string".into())
    } else {
        Err(format!("expected an absolute path, found `{path}`"))
    }
}

/// A mount path: absolute, not `/`, without `.` or `..` components.
pub(super) fn mount_path(path: &Path) -> Result<(), String> {
    let shown = path.display();
    if !path.is_absolute() {
        Err(format!("expected an absolute mount path, found `{shown}`"))
    } else if path
        .components()
        .any(|c| matches!(c, Component::CurDir | Component::ParentDir))
        || path
            .to_str()
            .is_some_and(|p| p.split('/').any(|c| c == "."))
    {
        Err(format!(
            "mount path `{shown}` has a `.` or `..` component, expected a plain absolute path"
        ))
    } else if path.parent().is_none() {
        Err("cannot mount a volume on `/`, expected a directory below it".into())
    } else {
        Ok(())
    }
}

/// A VFS volume's mount path as written: absolute (the same path at every site; not `/`), or
/// relative (under each site's `resources.mount_root`); no `.`, `..` or empty component. One
/// trailing `/` is allowed.
pub(super) fn volume_mount(path: &str) -> Result<(), String> {
    let body = path.strip_suffix('/').unwrap_or(path);
    if body.is_empty() {
        return Err(if path.is_empty() {
            "expected a mount path (relative to `resources.mount_root`, or absolute), found an \
             empty string"
                .into()
        } else {
            "cannot mount a volume on `/`, expected a directory below it".into()
        });
    }
    let relative = body.strip_prefix('/').unwrap_or(body);
    let kind = if body.starts_with('/') {
        "absolute"
    } else {
        "relative"
    };
    if relative.split('/').any(|c| c == "." || c == "..") {
        Err(format!(
            "mount path `{path}` has a `.` or `..` component, expected a plain {kind} path"
        ))
    } else if relative.split('/').any(str::is_empty) {
        Err(format!(
            "mount path `{path}` has an empty component (`//`), expected a plain {kind} path"
        ))
    } else {
        Ok(())
    }
}

/// How mount path `path` conflicts with `other` (a mount or a directory of the agent), if it does.
fn path_conflict(path: &Path, other: &Path) -> Option<&'static str> {
    if path == other {
        Some("is the same path as")
    } else if path.starts_with(other) {
        Some("is inside")
    } else if other.starts_with(path) {
        Some("contains")
    } else {
        None
    }
}

/// The problem of mount path `path` (`what`: "mount path", "default mount path") if it is the
/// same as, inside or contains `other`, which is `other_name` ("state_dir", "the mount of ...").
pub(super) fn mount_conflict(
    what: &str,
    path: &Path,
    other_name: &str,
    other: &Path,
) -> Option<String> {
    let relation = path_conflict(path, other)?;
    Some(format!(
        "{what} `{}` {relation} {other_name} `{}`",
        path.display(),
        other.display()
    ))
}

/// The problem of a share on volume `volume`, which is not one of `volumes`.
pub(super) fn unknown_share_volume(volume: &str, volumes: &[&str]) -> String {
    if volumes.is_empty() {
        return format!("unknown volume `{volume}`: this VFS has no volumes");
    }
    format!(
        "unknown volume `{volume}`, expected a volume of this VFS: {}",
        listing(volumes.iter().copied())
    )
}

/// `names` quoted, each once, separated by commas: "`a`, `b`".
pub(super) fn listing<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let mut quoted: Vec<String> = Vec::new();
    for name in names {
        let name = format!("`{name}`");
        if !quoted.contains(&name) {
            quoted.push(name);
        }
    }
    quoted.join(", ")
}

/// Names already used in one list, to report the duplicates; `T` is where the first one was.
pub(super) struct Seen<T> {
    fold_case: bool,
    first: HashMap<String, (String, String, T)>,
}

impl<T> Seen<T> {
    pub fn new() -> Self {
        Seen {
            fold_case: false,
            first: HashMap::new(),
        }
    }

    /// Names that differ only by case are the same.
    pub fn ignoring_case() -> Self {
        Seen {
            fold_case: true,
            first: HashMap::new(),
        }
    }

    /// Records `name`, used by `field` at `at`. When it was used before, the message saying so
    /// (naming the first field) and where the first one was.
    pub fn add(&mut self, what: &str, name: &str, field: &str, at: T) -> Option<(String, &T)> {
        let key = if self.fold_case {
            name.to_lowercase()
        } else {
            name.to_owned()
        };
        match self.first.entry(key) {
            Entry::Vacant(entry) => {
                entry.insert((name.to_owned(), field.to_owned(), at));
                None
            }
            Entry::Occupied(entry) => {
                let (first_name, first_field, first_at) = entry.into_mut();
                let same = if first_name == name {
                    String::new()
                } else {
                    format!(" (names ignore case: `{first_name}` is the same)")
                };
                let message =
                    format!("duplicate {what} `{name}`{same}, already used by {first_field}");
                Some((message, &*first_at))
            }
        }
    }
}

/// What to do with a file that is not of version `reads`, found `found` (written `text`).
const UPGRADE_NOTES: &[(i128, &str)] = &[(
    1,
    "its version 1 fields keep their meaning, and the vfsdr.yaml shipped with vfsdr documents \
     the new ones",
)];

/// The message for a file of version `found` (written `text`) when this vfsdr reads `reads`.
pub(super) fn unsupported_version(text: &str, found: Option<i128>, reads: u32) -> String {
    match found {
        Some(v) if v > reads.into() => format!(
            "version {text} is a newer format: this vfsdr reads version {reads} (the file was \
             written for a newer vfsdr: upgrade vfsdr, or rewrite the file as version {reads})"
        ),
        Some(v) if v >= 1 => {
            let note = UPGRADE_NOTES
                .iter()
                .find(|(old, _)| *old == v)
                .map(|(_, note)| format!(": {note}"))
                .unwrap_or_default();
            format!(
                "version {text} is an older format: this vfsdr reads version {reads} \
                 (rewrite the file as version {reads}{note})"
            )
        }
        _ => format!("expected a version number (this vfsdr reads version {reads}), found {text}"),
    }
}
