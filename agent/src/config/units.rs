//! The rules of quantities and addresses: sizes, durations, bandwidths, IP addresses.
//!
//! As in [`super::values`], they work on text and typed values, and return the value or the
//! message of its problem.

use std::net::{Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;

use super::FsType;

pub(super) const KIB: u64 = 1 << 10;
pub(super) const MIB: u64 = 1 << 20;
const SIZE_UNITS: &[(&str, u64)] = &[
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", MIB),
    ("KiB", KIB),
    ("B", 1),
];
/// Volume sizes are whole 4 KiB blocks.
pub(super) const VOLUME_BLOCK: u64 = 4 * KIB;

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
pub(super) const DAY: u64 = 24 * HOUR;
const DURATION_UNITS: &[(&str, u64)] = &[("d", DAY), ("h", HOUR), ("m", MINUTE), ("s", 1)];
/// Allowed replication intervals, in seconds.
pub(super) const INTERVAL_S: RangeInclusive<u64> = 1..=DAY;

pub(super) const SIZE_EXPECTED: &str = "expected a size: a whole number of bytes, or followed by \
    B, KiB, MiB, GiB or TiB (binary units; decimal units such as GB are not accepted)";
pub(super) const DURATION_EXPECTED: &str =
    "expected a duration: a whole number followed by s, m, h or d, such as 90s or 30d";
pub(super) const BANDWIDTH_EXPECTED: &str =
    "expected a bandwidth: a size per second such as 100MiB/s";
pub(super) const CIDR_EXPECTED: &str =
    "expected an IPv4 address with its prefix length, such as 198.18.0.100/24";
pub(super) const SOCKET_EXPECTED: &str =
    "expected an address `IP:PORT`, such as 198.18.0.1:7800 or [2001:db8::1]:7800";

/// `count` followed by the unit of `units` (largest first) that divides `value` exactly.
fn show(value: u64, units: &[(&str, u64)]) -> String {
    let (unit, scale) = units
        .iter()
        .find(|(_, scale)| value != 0 && value.is_multiple_of(*scale))
        .unwrap_or(&units[units.len() - 1]);
    format!("{}{unit}", value / scale)
}

/// A size as it would be written in the configuration: `300MiB`, `1000B`.
pub(super) fn show_size(bytes: u64) -> String {
    show(bytes, SIZE_UNITS)
}

/// A duration as it would be written in the configuration: `90s`, `1d`.
pub(super) fn show_duration(seconds: u64) -> String {
    show(seconds, DURATION_UNITS)
}

/// `NUMBER UNIT` (a space between is allowed), the unit one of `units` or none when
/// `unitless` is allowed. `Err(None)` when the text is not of that shape.
fn with_unit(text: &str, units: &[(&str, u64)], unitless: bool) -> Result<u64, Option<String>> {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let unit = unit.trim_start_matches(' ');
    if number.is_empty() {
        return Err(None);
    }
    let scale = match units.iter().find(|(name, _)| *name == unit) {
        Some((_, scale)) => *scale,
        None if unit.is_empty() && unitless => 1,
        None => return Err(None),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| Some(format!("`{text}` is too large")))
}

/// A size: `2GiB`, `512 MiB`, `4096` (bytes).
pub(super) fn size(text: &str) -> Result<u64, String> {
    with_unit(text, SIZE_UNITS, true).map_err(|e| e.unwrap_or_else(|| bad_size(text)))
}

fn bad_size(text: &str) -> String {
    let unit = text.trim_start_matches(|c: char| c.is_ascii_digit() || c == ' ');
    let decimal = ["k", "K", "kB", "KB", "M", "MB", "G", "GB", "T", "TB"];
    if text.starts_with(|c: char| c.is_ascii_digit()) && decimal.contains(&unit) {
        format!("unknown size unit `{unit}` in `{text}`, {SIZE_EXPECTED}")
    } else {
        format!("invalid size `{text}`, {SIZE_EXPECTED}")
    }
}

/// A volume's size for file system `fs`: whole 4 KiB blocks, at least what `mkfs` needs.
pub(super) fn volume_size(bytes: u64, fs: FsType) -> Result<(), String> {
    let min = min_volume_size(fs);
    if bytes < min {
        Err(format!(
            "{} volumes need at least {}, found {}",
            fs.kernel_name(),
            show_size(min),
            show_size(bytes)
        ))
    } else if !bytes.is_multiple_of(VOLUME_BLOCK) {
        Err(format!(
            "must be a whole number of 4KiB blocks, found {bytes} bytes"
        ))
    } else {
        Ok(())
    }
}

/// The smallest volume of file system `fs` (XFS: 300 MiB; mkfs.btrfs refuses less than 109 MiB).
pub(super) fn min_volume_size(fs: FsType) -> u64 {
    match fs {
        FsType::Xfs => 300 * MIB,
        FsType::Btrfs => 128 * MIB,
        FsType::Ext4 => 16 * MIB,
    }
}

/// A duration in seconds: `90s`, `15m`, `1h`, `30d`.
pub(super) fn duration(text: &str) -> Result<u64, String> {
    with_unit(text, DURATION_UNITS, false)
        .map_err(|e| e.unwrap_or_else(|| format!("invalid duration `{text}`, {DURATION_EXPECTED}")))
}

/// A replication interval: within [`INTERVAL_S`].
pub(super) fn interval(seconds: u64) -> Result<(), String> {
    if INTERVAL_S.contains(&seconds) {
        return Ok(());
    }
    Err(format!(
        "must be between {} and {}, found {}",
        show_duration(*INTERVAL_S.start()),
        show_duration(*INTERVAL_S.end()),
        show_duration(seconds)
    ))
}

/// A retention rule's `for`: more than 0.
pub(super) fn retention_for(for_s: u64) -> Result<(), String> {
    if for_s == 0 {
        return Err("must be longer than 0s: the rule would keep nothing".into());
    }
    Ok(())
}

/// A retention rule's `every` (0 for `all`), given its `for`: not longer than `for`.
pub(super) fn retention_every(every_s: u64, for_s: u64) -> Result<(), String> {
    if every_s > for_s {
        return Err(format!(
            "one snapshot every {} for {} keeps at most one snapshot, expected `every` \
             not longer than `for`",
            show_duration(every_s),
            show_duration(for_s)
        ));
    }
    Ok(())
}

/// A bandwidth in bytes per second: `100MiB/s`.
pub(super) fn bandwidth(text: &str) -> Result<u64, String> {
    let Some(per_second) = text.strip_suffix("/s") else {
        return Err(format!("invalid bandwidth `{text}`, {BANDWIDTH_EXPECTED}"));
    };
    let bytes = size(per_second.trim_end_matches(' '))
        .map_err(|problem| format!("invalid bandwidth `{text}`: {problem}"))?;
    bandwidth_limit(bytes)?;
    Ok(bytes)
}

/// An early-cycle trigger: more than 0 bytes.
pub(super) fn trigger(bytes: u64) -> Result<(), String> {
    if bytes == 0 {
        return Err("must be more than 0B (leave it out to replicate on the interval only)".into());
    }
    Ok(())
}

/// A bandwidth limit: more than 0 bytes per second.
pub(super) fn bandwidth_limit(bytes_per_s: u64) -> Result<(), String> {
    if bytes_per_s == 0 {
        return Err("must be more than 0B/s (leave it out for no limit)".into());
    }
    Ok(())
}

/// An interface address with its prefix length: `198.18.0.100/24`.
pub(super) fn interface_address(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let invalid = || format!("invalid address `{text}`, {CIDR_EXPECTED}");
    let Some((ip, prefix)) = text.split_once('/') else {
        return Err(if text.parse::<Ipv4Addr>().is_ok() {
            format!("`{text}` has no prefix length, {CIDR_EXPECTED}")
        } else {
            invalid()
        });
    };
    let ip: Ipv4Addr = ip.parse().map_err(|_| invalid())?;
    if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_digit()) || prefix.len() > 3 {
        return Err(invalid());
    }
    let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
    prefix_len(prefix)?;
    host_address(ip)?;
    Ok((ip, prefix))
}

/// A prefix length: 1 to 32.
pub(super) fn prefix_len(prefix: u8) -> Result<(), String> {
    if !(1..=32).contains(&prefix) {
        return Err(format!(
            "prefix length must be between 1 and 32, found {prefix}"
        ));
    }
    Ok(())
}

/// An address a host can own: not 0.0.0.0, loopback, multicast or 255.255.255.255.
pub(super) fn host_address(ip: Ipv4Addr) -> Result<(), String> {
    let what = if ip.is_unspecified() {
        "the unspecified address"
    } else if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else if ip.is_broadcast() {
        "the broadcast address"
    } else {
        return Ok(());
    };
    Err(format!(
        "{ip} is {what}, expected a unicast address for the interface"
    ))
}

/// A socket address `IP:PORT`, port not 0; a peer's address (`peer`) must name a host.
pub(super) fn socket_address(text: &str, peer: bool) -> Result<SocketAddr, String> {
    let address: SocketAddr = text
        .parse()
        .map_err(|_| format!("invalid address `{text}`, {SOCKET_EXPECTED}"))?;
    if address.port() == 0 {
        Err(format!(
            "port 0 in `{text}`, {SOCKET_EXPECTED} with a port from 1 to 65535"
        ))
    } else if peer && address.ip().is_unspecified() {
        Err(format!(
            "`{text}` names no host, expected the address where the peer listens"
        ))
    } else {
        Ok(address)
    }
}
