//! Loop-backed XFS: a site's pool, and volumes (image files inside a pool).
use std::{any::Any, path::Path, sync::Arc};

use anyhow::{Context as _, bail};

use crate::{
    cmd::{command, run},
    guard::{DirGuard, FileGuard, LoopGuard, MountGuard},
    registry::Registry,
};

/// Anything a pool keeps alive until it is gone (the site directory it lives in).
type KeepAlive = Arc<dyn Any + Send + Sync>;

/// A site's XFS pool (reflink=1): a sparse file `DIR/pool.img` on a loop device, mounted at
/// `DIR/pool`. Clones share it; the last one dropped unmounts it, detaches the loop device and
/// removes the file. Volumes made with [`Pool::create_volume`] keep their pool alive.
#[derive(Clone, Debug)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

// Fields in teardown order.
#[derive(Debug)]
struct PoolInner {
    volumes_dir: DirGuard,
    mount: MountGuard,
    _mount_dir: DirGuard,
    loopdev: LoopGuard,
    image: FileGuard,
    registry: Option<Registry>,
    _keep: Option<KeepAliveDebug>,
}

/// Held for its Drop only.
struct KeepAliveDebug {
    _inner: KeepAlive,
}

impl std::fmt::Debug for KeepAliveDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeepAlive")
    }
}

impl Pool {
    /// Creates a pool of `size` bytes in the existing directory `dir`: `dir/pool.img` (sparse,
    /// `mkfs.xfs -q -m reflink=1`), attached with `losetup --find --show`, mounted at `dir/pool`;
    /// volumes get their mount points under `dir/mnt`. XFS needs at least 300 MiB.
    pub fn create(dir: &Path, size: u64) -> anyhow::Result<Self> {
        Self::create_in(dir, size, None, None)
    }

    pub(crate) fn create_in(
        dir: &Path,
        size: u64,
        registry: Option<Registry>,
        keep: Option<KeepAlive>,
    ) -> anyhow::Result<Self> {
        let image_path = dir.join("pool.img");
        let image = FileGuard::sparse(&image_path, size)?;
        if let Some(r) = &registry {
            r.note_file(&image_path);
        }
        mkfs_xfs(&image_path, &["-m", "reflink=1"])?;
        let loopdev = LoopGuard::attach(&image_path)?;
        let mount_dir = DirGuard::create(&dir.join("pool"), false)?;
        let mount = MountGuard::mount(loopdev.device(), mount_dir.path(), "xfs", None)?;
        let volumes_dir = DirGuard::create(&dir.join("mnt"), false)?;
        Ok(Self {
            inner: Arc::new(PoolInner {
                volumes_dir,
                mount,
                _mount_dir: mount_dir,
                loopdev,
                image,
                registry,
                _keep: keep.map(|k| KeepAliveDebug { _inner: k }),
            }),
        })
    }

    /// The pool's backing file.
    pub fn image(&self) -> &Path {
        self.inner.image.path()
    }

    /// The pool's loop device (`/dev/loopN`).
    pub fn loop_device(&self) -> &Path {
        self.inner.loopdev.device()
    }

    /// Where the pool is mounted (`DIR/pool`).
    pub fn mount_point(&self) -> &Path {
        self.inner.mount.target()
    }

    /// The directory holding volume mount points (`DIR/mnt`).
    pub fn volumes_dir(&self) -> &Path {
        self.inner.volumes_dir.path()
    }

    /// Creates a volume NAME of `size` bytes: image `POOL/NAME.img`, mounted at `DIR/mnt/NAME`.
    /// It keeps the pool alive. XFS needs at least 300 MiB.
    pub fn create_volume(&self, name: &str, size: u64) -> anyhow::Result<Volume> {
        check_name(name)?;
        let image = self.mount_point().join(format!("{name}.img"));
        let mount_point = self.volumes_dir().join(name);
        let mut volume =
            Volume::create_in(&image, &mount_point, size, self.inner.registry.as_ref())
                .with_context(|| {
                    format!(
                        "cannot create volume {name} in pool {}",
                        self.mount_point().display()
                    )
                })?;
        volume._pool = Some(self.clone());
        Ok(volume)
    }
}

/// A volume: a sparse image file formatted XFS (`mkfs.xfs -q`), attached as a loop device
/// (`losetup --find --show --direct-io=off`) and mounted. Dropping it unmounts it (lazily if still
/// busy after a second), detaches the loop device, and removes the image and the mount point (if it
/// created it).
#[derive(Debug)]
pub struct Volume {
    // Fields in teardown order.
    mount: MountGuard,
    _mount_dir: Option<DirGuard>,
    loopdev: LoopGuard,
    image: FileGuard,
    _pool: Option<Pool>,
}

impl Volume {
    /// Creates the image `image` (must not exist) of `size` bytes and mounts it at `mount_point`
    /// (created if missing; its parent must exist).
    pub fn create(image: &Path, mount_point: &Path, size: u64) -> anyhow::Result<Self> {
        Self::create_in(image, mount_point, size, None)
    }

    fn create_in(
        image: &Path,
        mount_point: &Path,
        size: u64,
        registry: Option<&Registry>,
    ) -> anyhow::Result<Self> {
        let image_guard = FileGuard::sparse(image, size)?;
        if let Some(r) = registry {
            r.note_file(image);
        }
        mkfs_xfs(image, &[])?;
        let loopdev = LoopGuard::attach(image)?;
        let mount_dir = if mount_point.is_dir() {
            None
        } else {
            Some(DirGuard::create(mount_point, false)?)
        };
        let mount = MountGuard::mount(loopdev.device(), mount_point, "xfs", None)?;
        Ok(Self {
            mount,
            _mount_dir: mount_dir,
            loopdev,
            image: image_guard,
            _pool: None,
        })
    }

    /// The image file.
    pub fn image(&self) -> &Path {
        self.image.path()
    }

    /// The loop device (`/dev/loopN`).
    pub fn loop_device(&self) -> &Path {
        self.loopdev.device()
    }

    /// Where it is mounted.
    pub fn mount_point(&self) -> &Path {
        self.mount.target()
    }

    /// The pool it lives in, if made by [`Pool::create_volume`].
    pub fn pool(&self) -> Option<&Pool> {
        self._pool.as_ref()
    }
}

fn mkfs_xfs(file: &Path, extra: &[&str]) -> anyhow::Result<()> {
    let mut cmd = command("mkfs.xfs", ["-q"]);
    cmd.args(extra).arg(file);
    run(&mut cmd).map(drop)
}

/// Names used in paths and interface names: 1-32 of `[a-z0-9_-]`, starting with a letter or digit.
pub(crate) fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if !ok {
        bail!("bad lab name {name:?}: use 1-32 of a-z 0-9 - _, starting with a letter or digit");
    }
    Ok(())
}

/// Sizes in bytes.
pub const MIB: u64 = 1 << 20;
/// Sizes in bytes.
pub const GIB: u64 = 1 << 30;

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Pool>();
    is::<Volume>();
}
