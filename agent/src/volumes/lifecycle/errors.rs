//! Why a volume's step was refused (nothing changed) or failed.
use std::path::PathBuf;

use super::Stage;
use crate::{resources::mounts::MountError, volumes::VolumeError};

/// Why a volume cannot be brought up as configured; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(
        "image {image} holds data ({allocated} bytes allocated) but no file system signature; \
         it is not formatted over (restore it, or move it away to start empty)"
    )]
    DataWithoutFileSystem { image: PathBuf, allocated: u64 },
    #[error(
        "image {image} is {found} bytes, larger than the configured size {configured} bytes; \
         shrinking would lose data (configure at least {found})"
    )]
    ImageLarger {
        image: PathBuf,
        found: u64,
        configured: u64,
    },
    #[error("image {image} holds {found}, the configuration says {configured}")]
    OtherFileSystem {
        image: PathBuf,
        found: &'static str,
        configured: &'static str,
    },
    #[error("{target} is held by {holder} ({fstype}), not by the image {image}; nothing changed")]
    MountPointHeld {
        target: PathBuf,
        holder: String,
        fstype: String,
        image: PathBuf,
    },
    #[error("image {image} is mounted at {elsewhere}, not at {target}; unmount it there first")]
    MountedElsewhere {
        image: PathBuf,
        elsewhere: PathBuf,
        target: PathBuf,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Device(#[from] VolumeError),
    #[error(transparent)]
    Mount(#[from] MountError),
}

/// A volume's step that failed, or was refused.
#[derive(Debug, thiserror::Error)]
#[error("VFS {vfs} volume {volume}: {stage}: {problem}")]
pub struct LifecycleError {
    pub vfs: String,
    pub volume: String,
    pub stage: Stage,
    #[source]
    pub problem: Box<Problem>,
}
