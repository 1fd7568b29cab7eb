//! The site configuration, as loaded and validated from YAML (`version: 2`).
use std::{net::SocketAddr, path::PathBuf};

pub use super::vfs::*;

/// Current version of the configuration file format.
/// 2: peers, TLS, resources and VFS definitions.
pub const VERSION: u32 = 2;

/// A validated site configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub version: u32,
    pub site: Site,
    /// Persistent state of the agent (default `/var/lib/vfsdr`).
    pub state_dir: PathBuf,
    /// Runtime files: the API socket (default `/run/vfsdr`).
    pub runtime_dir: PathBuf,
    pub tracking: Tracking,
    /// Other sites this one talks to (unique names, not this site's).
    pub peers: Vec<Peer>,
    /// What this site offers to VFSs failing over to it.
    pub resources: Resources,
    /// Devices or images whose writes are tracked outside any VFS.
    pub volumes: Vec<Volume>,
    /// The VFSs defined here: this site is their active site (unique names; their NetBIOS names,
    /// interface addresses and mounts are unique across them).
    pub vfs: Vec<VfsDef>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// `[a-z0-9-]`, 1 to 32 characters, starting with a letter.
    pub name: String,
    /// Where the peer link listens (`ip:port`, port not 0); absent: no peer link (no `peers`
    /// allowed then).
    pub listen: Option<SocketAddr>,
    /// Certificates of the peer link; required when `listen` or `peers` is set.
    pub tls: Option<Tls>,
}

/// PEM files of the peer link (absolute paths). Peers must present a certificate signed by
/// `ca` whose DNS name is their site name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its site name (name rules), which its certificate must carry.
    pub name: String,
    /// Its peer link address (`ip:port`: a host, not 0.0.0.0 or `::`; port not 0).
    pub address: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Resources {
    /// Links VFS interfaces may use, by network (unique link names; a network is carried by one
    /// link only). An interface network no link carries is not an error here: the DR site may
    /// carry it, and the precheck reports it.
    pub links: Vec<Link>,
    /// Where volume images, replicas and snapshots live; absent: this site hosts no volumes
    /// (so `vfs` must be empty).
    pub pool: Option<Pool>,
    /// Under which VFS volumes are mounted by default (default `/srv/vfsdr/mnt`; absolute,
    /// not `/`, no `.` or `..`).
    pub mount_root: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// A kernel link name (1 to 15 characters, no `/`, whitespace or `:`).
    pub name: String,
    /// Network names (name rules), at least one.
    pub networks: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    /// A directory on a reflink-capable file system (absolute).
    pub path: PathBuf,
    /// Space always left free (YAML `reserve: 1GiB`; default 0).
    pub reserve_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracking {
    /// How often the agent drains the kernel's extent buffer (10 to 10000 ms; default 200).
    pub poll_interval_ms: u64,
    /// How many writing processes `vfsdr status` lists (1 to 100; default 10).
    pub top_writers: usize,
    /// Count write syscalls per process ("who is writing"; default false). Its probe runs at
    /// every syscall entry of the host (measured: +7% on a 4 KiB write loop, +54% on a null
    /// syscall), so it is for when the question is asked; block tracking, which replication
    /// needs, is not affected.
    pub writers: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    /// Unique within the site; same rules as the site name.
    pub name: String,
    pub source: VolumeSource,
}

/// Where a volume's blocks live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeSource {
    /// A block device (absolute path).
    Device(PathBuf),
    /// An image file (absolute path), watched through the loop device it is attached to.
    Image(PathBuf),
}

impl Config {
    /// The agent's local API socket.
    pub fn api_socket(&self) -> PathBuf {
        self.runtime_dir.join("agent.sock")
    }
}
