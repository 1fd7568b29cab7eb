//! Drop guards for the single things the lab creates: a file, a directory, a loop device, a mount.
//!
//! Each guard undoes exactly one action. Composite objects hold them as fields in teardown order
//! (Rust drops fields in declaration order), and constructors build them step by step, so a failure
//! half-way undoes what was done. Drops are best-effort: they log what they could not undo and never
//! panic.
use std::{
    fs,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{
    cmd::{command, run},
    sys,
};

/// Logs a teardown problem; teardown goes on.
pub fn warn(what: std::fmt::Arguments<'_>) {
    eprintln!("vfsdr-lab: teardown: {what}");
}

/// A sparse file, removed on drop.
#[derive(Debug)]
pub struct FileGuard {
    path: PathBuf,
}

impl FileGuard {
    /// Creates `path` (which must not exist) as a sparse file of `size` bytes.
    pub fn sparse(path: &Path, size: u64) -> anyhow::Result<Self> {
        let f = fs::File::create_new(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let guard = Self {
            path: path.to_path_buf(),
        };
        f.set_len(size)
            .with_context(|| format!("cannot size {} to {size} bytes", path.display()))?;
        Ok(guard)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FileGuard {
    fn drop(&mut self) {
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn(format_args!("cannot remove {}: {e}", self.path.display())),
        }
    }
}

/// A directory created by the lab. On drop a plain one is removed if empty; a tree is removed with
/// everything in it, after lazily unmounting and detaching whatever was left mounted or looped below
/// it (it never deletes through a mount).
#[derive(Debug)]
pub struct DirGuard {
    path: PathBuf,
    tree: bool,
}

impl DirGuard {
    /// Creates `path` (the parent must exist, `path` must not), mode 0755.
    pub fn create(path: &Path, tree: bool) -> anyhow::Result<Self> {
        fs::DirBuilder::new()
            .mode(0o755)
            .create(path)
            .with_context(|| format!("cannot create directory {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            tree,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if !self.tree {
            if let Err(e) = fs::remove_dir(&self.path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                warn(format_args!(
                    "cannot remove directory {}: {e}",
                    self.path.display()
                ));
            }
            return;
        }
        if !self.path.exists() {
            return;
        }
        release_tree(&self.path);
        let left = sys::mounts_under(&self.path);
        if !left.is_empty() {
            warn(format_args!(
                "not removing {}: still mounted below it: {left:?}",
                self.path.display()
            ));
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.path) {
            warn(format_args!("cannot remove {}: {e}", self.path.display()));
        }
    }
}

/// Unmounts everything mounted below `dir` and detaches the loop devices backed by files below it,
/// logging each (they should have been released by their own guards). Used by tree guards and by
/// the stale-lab sweep.
pub fn release_tree(dir: &Path) {
    // A volume's loop device keeps its image in the pool open, so alternate: unmount what can be,
    // detach loops, and repeat until nothing changes; then detach the rest lazily.
    for _round in 0..4 {
        let mounts = sys::mounts_under(dir);
        let loops = sys::loops_backed_under(dir);
        if mounts.is_empty() && loops.is_empty() {
            break;
        }
        for m in &mounts {
            warn(format_args!(
                "{} was still mounted; unmounting",
                m.display()
            ));
            let _ = run(&mut command("umount", [m]));
        }
        for l in sys::loops_backed_under(dir)
            .into_iter()
            .filter(|l| !l.autoclear)
        {
            warn(format_args!(
                "{} still backed by {}; detaching",
                l.device.display(),
                l.backing_file.display()
            ));
            let _ = run(&mut command(
                "losetup",
                ["-d".as_ref(), l.device.as_os_str()],
            ));
        }
    }
    for m in sys::mounts_under(dir) {
        warn(format_args!("{} is busy; unmounting lazily", m.display()));
        let _ = run(&mut command("umount", ["-l".as_ref(), m.as_os_str()]));
    }
    // A loop device detached while still in use is cleared by the kernel when its last user goes,
    // which can be a moment after the unmount that released it.
    for _ in 0..100 {
        if sys::loops_backed_under(dir).is_empty() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    for l in sys::loops_backed_under(dir) {
        warn(format_args!(
            "{} is still in use (backed by {})",
            l.device.display(),
            l.backing_file.display()
        ));
    }
}

/// A loop device bound to a file, detached on drop (only if it still backs that file).
#[derive(Debug)]
pub struct LoopGuard {
    device: PathBuf,
    file: PathBuf,
}

impl LoopGuard {
    /// `losetup --find --show --direct-io=off FILE`.
    pub fn attach(file: &Path) -> anyhow::Result<Self> {
        let out = run(&mut command(
            "losetup",
            [
                "--find".as_ref(),
                "--show".as_ref(),
                "--direct-io=off".as_ref(),
                file.as_os_str(),
            ],
        ))?;
        let device = PathBuf::from(out.trim());
        if !device.starts_with("/dev/") {
            bail!(
                "losetup printed {out:?} instead of a loop device for {}",
                file.display()
            );
        }
        Ok(Self {
            device,
            file: file.to_path_buf(),
        })
    }

    pub fn device(&self) -> &Path {
        &self.device
    }
}

impl Drop for LoopGuard {
    fn drop(&mut self) {
        match sys::loop_backing_file(&self.device) {
            None => {} // already detached
            Some(f) if f == self.file => {
                if let Err(e) = run(&mut command(
                    "losetup",
                    ["-d".as_ref(), self.device.as_os_str()],
                )) {
                    warn(format_args!("{e:#}"));
                }
            }
            Some(other) => warn(format_args!(
                "{} now backs {}, not {}; left alone",
                self.device.display(),
                other.display(),
                self.file.display()
            )),
        }
    }
}

/// A mount, unmounted on drop: plain umount, retried for about a second while busy, then lazy.
#[derive(Debug)]
pub struct MountGuard {
    target: PathBuf,
}

impl MountGuard {
    /// `mount -t FSTYPE [-o OPTIONS] SOURCE TARGET`.
    pub fn mount(
        source: &Path,
        target: &Path,
        fstype: &str,
        options: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut cmd = command("mount", ["-t", fstype]);
        if let Some(o) = options {
            cmd.args(["-o", o]);
        }
        cmd.arg(source).arg(target);
        run(&mut cmd)?;
        Ok(Self {
            target: target.to_path_buf(),
        })
    }

    pub fn target(&self) -> &Path {
        &self.target
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        unmount(&self.target);
    }
}

/// Unmounts `target` if it is mounted: retries a busy target for about a second, then lazily.
pub fn unmount(target: &Path) {
    let mut last = None;
    for _ in 0..10 {
        if !sys::is_mounted(target) {
            return;
        }
        match run(&mut command("umount", [target])) {
            Ok(_) => return,
            Err(e) => last = Some(e),
        }
        thread::sleep(Duration::from_millis(100));
    }
    if !sys::is_mounted(target) {
        return;
    }
    if let Some(e) = last {
        warn(format_args!("{e:#}; unmounting lazily"));
    }
    if let Err(e) = run(&mut command("umount", ["-l".as_ref(), target.as_os_str()])) {
        warn(format_args!("{e:#}"));
    }
}
