//! What a lab created, so tests can prove that nothing of it is left after teardown.
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use crate::sys;

/// Shared, append-only record of a lab's namespaces, backing files and processes.
#[derive(Clone, Debug, Default)]
pub(crate) struct Registry {
    inner: Arc<Mutex<Footprint>>,
}

impl Registry {
    pub fn new(dir: &Path) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Footprint {
                dir: dir.to_path_buf(),
                ..Footprint::default()
            })),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Footprint) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn note_netns(&self, name: &str) {
        self.with(|f| f.netns.push(name.to_string()));
    }

    pub fn note_file(&self, path: &Path) {
        self.with(|f| f.files.push(path.to_path_buf()));
    }

    pub fn note_process(&self, pid: u32) {
        if let Some(start) = sys::process_start_time(pid) {
            self.with(|f| f.processes.push((pid, start)));
        }
    }

    pub fn snapshot(&self) -> Footprint {
        self.with(|f| f.clone())
    }
}

/// Everything a lab has created so far: take it with [`crate::Lab::footprint`] before dropping the
/// lab, then call [`Footprint::leftovers`] after.
#[derive(Clone, Debug, Default)]
pub struct Footprint {
    /// The lab's temporary directory; every file, mount point and backing file is below it.
    pub dir: PathBuf,
    /// Network namespace names.
    pub netns: Vec<String>,
    /// Backing files of pools and volumes (loop-attached).
    pub files: Vec<PathBuf>,
    /// Daemons started in the lab's namespaces: pid and start time (so pid reuse is not mistaken
    /// for a leftover).
    pub processes: Vec<(u32, u64)>,
}

impl Footprint {
    /// What is still there, one line each: named namespaces, loop devices backed by the lab's files
    /// (or by anything below its directory, also deleted files), mounts below its directory, the
    /// directory itself, and live daemons. Empty when the lab is fully torn down.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let names = sys::netns_names();
        for ns in &self.netns {
            if names.contains(ns) {
                left.push(format!("network namespace {ns}"));
            }
        }
        for l in sys::loop_devices() {
            let ours = self.files.contains(&l.backing_file)
                || (!self.dir.as_os_str().is_empty() && l.backing_file.starts_with(&self.dir));
            if ours {
                left.push(format!(
                    "loop device {} backed by {}{}",
                    l.device.display(),
                    l.backing_file.display(),
                    if l.deleted { " (deleted)" } else { "" }
                ));
            }
        }
        if !self.dir.as_os_str().is_empty() {
            for m in sys::mounts_under(&self.dir) {
                left.push(format!("mount {}", m.display()));
            }
            if self.dir.exists() {
                left.push(format!("directory {}", self.dir.display()));
            }
        }
        for (pid, start) in &self.processes {
            if sys::process_start_time(*pid) == Some(*start) {
                left.push(format!("process {pid}"));
            }
        }
        left
    }
}
