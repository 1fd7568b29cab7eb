//! The site configuration, as loaded and validated from YAML (`version: 1`).
use std::path::PathBuf;

/// Current version of the configuration file format.
pub const VERSION: u32 = 1;

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
    /// Volumes whose writes are tracked.
    pub volumes: Vec<Volume>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// `[a-z0-9-]`, 1 to 32 characters, starting with a letter.
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracking {
    /// How often the agent drains the kernel's extent buffer (10 to 10000 ms; default 200).
    pub poll_interval_ms: u64,
    /// How many writing processes `vfsdr status` lists (1 to 100; default 10).
    pub top_writers: usize,
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
