//! YAML scalars read as typed values: the YAML type is checked here, the value by the rules of
//! [`super::values`]. Each returns the value, or the message of its problem.

use std::net::{Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use super::units;
use super::values;
use super::yaml::{Node, Scalar, Value};

/// The text of a string node; `expected` names what was expected ("a name").
pub(super) fn text<'a>(node: &'a Node, expected: &str) -> Result<&'a str, String> {
    node.as_str()
        .ok_or_else(|| format!("expected {expected}, found {}", node.describe()))
}

/// A string checked by `rule`.
fn checked(
    node: &Node,
    expected: &str,
    rule: fn(&str) -> Result<(), String>,
) -> Result<String, String> {
    let text = text(node, expected)?;
    rule(text)?;
    Ok(text.to_owned())
}

/// A site, volume, network or peer name.
pub(super) fn name(node: &Node) -> Result<String, String> {
    checked(node, "a name", values::name)
}

pub(super) fn vfs_name(node: &Node) -> Result<String, String> {
    checked(node, "a name", values::vfs_name)
}

pub(super) fn link_name(node: &Node) -> Result<String, String> {
    checked(node, "a link name", values::link_name)
}

pub(super) fn netbios_name(node: &Node) -> Result<String, String> {
    checked(node, "a NetBIOS name", values::netbios_name)
}

pub(super) fn share_name(node: &Node) -> Result<String, String> {
    checked(node, "a share name", values::share_name)
}

pub(super) fn share_path(node: &Node) -> Result<String, String> {
    checked(node, "a directory of the volume", values::share_path)
}

/// `true` or `false` (the YAML core schema's spellings).
pub(super) fn boolean(node: &Node) -> Result<bool, String> {
    match &node.value {
        Value::Scalar(text, Scalar::Bool) => Ok(text.eq_ignore_ascii_case("true")),
        _ => Err(format!("expected true or false, found {}", node.describe())),
    }
}

/// An absolute path.
pub(super) fn absolute_path(node: &Node) -> Result<PathBuf, String> {
    values::absolute_path(text(node, "an absolute path")?)
}

/// A mount path: absolute, not `/`, no `.` or `..`; a trailing `/` is dropped.
pub(super) fn mount_path(node: &Node) -> Result<PathBuf, String> {
    let path = absolute_path(node)?;
    values::mount_path(&path)?;
    Ok(path.components().collect())
}

/// A VFS volume's mount path: absolute, or relative to the site's `resources.mount_root`
/// (see [`values::volume_mount`]); a trailing `/` is dropped.
pub(super) fn volume_mount(node: &Node) -> Result<PathBuf, String> {
    let path = text(node, "a mount path")?;
    values::volume_mount(path)?;
    Ok(Path::new(path).components().collect())
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

/// A size in bytes: an integer (bytes) or a string such as `2GiB`.
pub(super) fn size(node: &Node) -> Result<u64, String> {
    match &node.value {
        Value::Scalar(text, Scalar::Int(value)) => value
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| format!("invalid size `{text}`, {}", units::SIZE_EXPECTED)),
        _ => units::size(text(node, "a size such as 2GiB")?),
    }
}

/// A duration in seconds, such as `60s`.
pub(super) fn duration(node: &Node) -> Result<u64, String> {
    match &node.value {
        Value::Scalar(text, Scalar::Int(_)) => Err(format!(
            "`{text}` has no unit, {} (write `{text}s` for seconds)",
            units::DURATION_EXPECTED
        )),
        _ => units::duration(text(node, "a duration such as 60s")?),
    }
}

/// A bandwidth in bytes per second, such as `100MiB/s`.
pub(super) fn bandwidth(node: &Node) -> Result<u64, String> {
    units::bandwidth(text(node, "a bandwidth such as 100MiB/s")?)
}

/// An interface address with its prefix length, such as `198.18.0.100/24`.
pub(super) fn interface_address(node: &Node) -> Result<(Ipv4Addr, u8), String> {
    units::interface_address(text(node, "an address such as 198.18.0.100/24")?)
}

/// A socket address `IP:PORT`; `peer`: it must name a host.
pub(super) fn socket_address(node: &Node, peer: bool) -> Result<SocketAddr, String> {
    if matches!(node.value, Value::Seq(_)) {
        // `[2001:db8::1]:7800` unquoted starts a YAML sequence.
        return Err(
            "expected an address `IP:PORT`, found a sequence (quote an IPv6 address: \
             \"[2001:db8::1]:7800\")"
                .into(),
        );
    }
    units::socket_address(text(node, "an address IP:PORT")?, peer)
}

/// One of the named `choices`.
pub(super) fn choice<T: Copy>(node: &Node, choices: &[(&str, T)]) -> Result<T, String> {
    let names: Vec<String> = choices
        .iter()
        .map(|(name, _)| format!("`{name}`"))
        .collect();
    let expected = format!("expected one of {}", names.join(", "));
    let Some(text) = node.as_str() else {
        return Err(format!("{expected}, found {}", node.describe()));
    };
    choices
        .iter()
        .find(|(name, _)| *name == text)
        .map(|&(_, value)| value)
        .ok_or_else(|| format!("unknown value `{text}`, {expected}"))
}
