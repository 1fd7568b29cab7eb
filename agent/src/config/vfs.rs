//! A virtual file server's definition. The active site reads it from its configuration and sends
//! it to its DR site over the peer link, which keeps it in its state store; so it serializes
//! (serde, JSON on the wire and in SQLite) and `VfsDef::validate` checks a received one as
//! strictly as the configuration decoder checks a local one.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VfsDef {
    /// Same rules as a site name (`[a-z0-9-]`, 1 to 32, starting with a letter); at most 11
    /// characters, so link names derived from it fit the kernel's 15.
    pub name: String,
    /// At least one.
    pub volumes: Vec<VfsVolume>,
    /// At least one.
    pub interfaces: Vec<VfsInterface>,
    pub smb: Smb,
    pub replication: Replication,
    pub snapshots: Retention,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VfsVolume {
    /// Unique within the VFS; name rules.
    pub name: String,
    /// YAML: `size: 2GiB` (units B, KiB, MiB, GiB, TiB, or a plain number of bytes). Whole 4 KiB
    /// blocks; at least 300 MiB for XFS, 128 MiB for btrfs, 16 MiB for ext4.
    pub size_bytes: u64,
    pub filesystem: FsType,
    /// Where the volume is mounted, as written: a relative path is under each site's
    /// `resources.mount_root` (default `<vfs>/<volume>`), an absolute one is the same path at
    /// every site (not `/`). No `.`, `..` or empty component. Resolved at a site
    /// ([`VfsVolume::mount_at`]), it is not the same as, inside or containing another VFS
    /// volume's mount, `state_dir`, `runtime_dir` or the pool.
    pub mount: PathBuf,
}

impl VfsVolume {
    /// The mount path at a site whose `resources.mount_root` is `mount_root`.
    pub fn mount_at(&self, mount_root: &Path) -> PathBuf {
        if self.mount.is_absolute() {
            self.mount.clone()
        } else {
            mount_root.join(&self.mount)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    Xfs,
    Ext4,
    Btrfs,
}

impl FsType {
    /// The kernel's name for it (as in /proc/filesystems and mount(2)).
    pub fn kernel_name(self) -> &'static str {
        match self {
            FsType::Xfs => "xfs",
            FsType::Ext4 => "ext4",
            FsType::Btrfs => "btrfs",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VfsInterface {
    /// Unique within the VFS; name rules (e.g. `smb0`).
    pub name: String,
    /// YAML: `address: 198.18.0.100/24`. A unicast address (not 0.0.0.0, loopback, multicast
    /// or 255.255.255.255), unique among the interfaces of a site's VFSs.
    pub address: Ipv4Addr,
    /// 1 to 32.
    pub prefix_len: u8,
    /// Which network it belongs to; a site offers links by network (`resources.links`).
    pub network: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Smb {
    /// NetBIOS name: 1 to 15 of `A-Z 0-9 -`, upper case; unique among a site's VFSs.
    pub netbios_name: String,
    pub shares: Vec<Share>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Share {
    /// 1 to 80 characters, no `/ \ [ ] : | < > + = ; , * ? "` or control characters, no space at
    /// either end, not `global`, `homes`, `printers` or `ipc$` (sections of smb.conf); unique
    /// (case-insensitively).
    pub name: String,
    /// A volume of this VFS.
    pub volume: String,
    /// Relative directory inside the volume; empty for its root. No leading `/`, no `.`, `..` or
    /// empty component.
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replication {
    /// The DR site: one of `peers`.
    pub peer: String,
    /// YAML: `interval: 60s` (units s, m, h, d); 1 s to 1 d.
    pub interval_s: u64,
    /// Default zstd.
    pub compression: Compression,
    /// YAML: `bandwidth_limit: 100MiB/s`; absent means unlimited; more than 0.
    pub bandwidth_limit_bytes_per_s: Option<u64>,
    /// YAML: `trigger: 1GiB`: a cycle starts early once this much was written to the VFS's
    /// volumes since the last one (the data at risk, tracked with eBPF); absent: on the
    /// interval only; more than 0.
    #[serde(default)]
    pub trigger_at_risk_bytes: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Zstd,
    Lz4,
    None,
}

/// Which snapshots the DR site keeps: a snapshot is kept while some rule keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// At least one.
    pub rules: Vec<RetentionRule>,
}

/// YAML: `- {every: all, for: 1h}` or `- {every: 1d, for: 30d}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    /// Keep one snapshot per this period; 0 (`all`) keeps every snapshot. Not longer than
    /// `for_s`.
    pub every_s: u64,
    /// For snapshots younger than this; more than 0.
    pub for_s: u64,
}

impl Default for Retention {
    /// Every snapshot for an hour, hourly for a day, daily for 30 days.
    fn default() -> Self {
        const H: u64 = 3600;
        Retention {
            rules: vec![
                RetentionRule {
                    every_s: 0,
                    for_s: H,
                },
                RetentionRule {
                    every_s: H,
                    for_s: 24 * H,
                },
                RetentionRule {
                    every_s: 24 * H,
                    for_s: 30 * 24 * H,
                },
            ],
        }
    }
}

/// A small valid definition for tests: one 2 GiB XFS volume `data` mounted at `mount`, one
/// interface `smb0` 198.18.0.100/24 on network `lan`, DR site `peer`.
#[cfg(test)]
pub(crate) fn test_vfs(name: &str, peer: &str, mount: &str) -> VfsDef {
    VfsDef {
        name: name.into(),
        volumes: vec![VfsVolume {
            name: "data".into(),
            size_bytes: 2 << 30,
            filesystem: FsType::Xfs,
            mount: mount.into(),
        }],
        interfaces: vec![VfsInterface {
            name: "smb0".into(),
            address: Ipv4Addr::new(198, 18, 0, 100),
            prefix_len: 24,
            network: "lan".into(),
        }],
        smb: Smb {
            netbios_name: name.to_uppercase(),
            shares: vec![Share {
                name: "data".into(),
                volume: "data".into(),
                path: String::new(),
            }],
        },
        replication: Replication {
            peer: peer.into(),
            interval_s: 60,
            compression: Compression::Zstd,
            bandwidth_limit_bytes_per_s: None,
            trigger_at_risk_bytes: None,
        },
        snapshots: Retention::default(),
    }
}
