//! The life cycle of a VFS's volumes at its active site, as a typed plan applied step by step:
//! image (created sparse) -> file system (mkfs) -> loop device (attached) -> mount (at the
//! resolved mount path). [`observe`] reads what the kernel holds, [`plan`] says what is missing
//! (or why nothing may be done), [`bring_up`] does it, [`bring_down`] unmounts and detaches
//! (images are never deleted). Every step is idempotent: what is there is reported `present`.
//!
//! The plan refuses, before changing anything: an image that holds data but no file system
//! signature (never formatted over), an image larger than configured (shrinking loses data),
//! another file system than configured, something else mounted at the mount path, and the
//! image mounted somewhere else.
use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

mod down;
mod errors;
#[cfg(test)]
mod tests;

pub use down::{bring_down, describe};
pub use errors::{LifecycleError, Problem, Refusal};

use super::{BlockDevices, ImageInfo};
use crate::{
    config::FsType,
    resources::mounts::{MountEntry, Mounts},
};

/// A volume of a VFS active at this site, resolved at this site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveVolume {
    pub vfs: String,
    pub volume: String,
    /// `<pool>/volumes/<vfs>/<volume>.img`.
    pub image: PathBuf,
    /// The mount path resolved under this site's mount root.
    pub mount: PathBuf,
    pub size_bytes: u64,
    pub filesystem: FsType,
}

impl ActiveVolume {
    /// `vfs/volume`, the name the agent tracks it under.
    pub fn name(&self) -> String {
        format!("{}/{}", self.vfs, self.volume)
    }
}

/// The steps of a volume's life cycle, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Image,
    FileSystem,
    Loop,
    Mount,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Image => "image",
            Stage::FileSystem => "file system",
            Stage::Loop => "loop device",
            Stage::Mount => "mount",
        })
    }
}

/// What the kernel holds for a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub image: Option<ImageInfo>,
    /// Loop devices backed by the image.
    pub loops: Vec<PathBuf>,
    /// What is mounted at the mount path (the top mount), if anything.
    pub at_target: Option<MountEntry>,
    /// Where a loop device of the image is mounted other than at the mount path.
    pub elsewhere: Option<PathBuf>,
}

impl Observed {
    /// Whether the image's loop device is what is mounted at the mount path.
    pub fn mounted(&self) -> bool {
        self.at_target
            .as_ref()
            .is_some_and(|m| self.loops.iter().any(|l| Path::new(&m.source) == l))
    }
}

/// One thing to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    CreateImage {
        size: u64,
    },
    Format(FsType),
    Attach,
    /// Mount the loop device (`None`: the one `Attach` makes).
    Mount {
        device: Option<PathBuf>,
    },
}

/// One step as done (or found done).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepDone {
    pub stage: Stage,
    /// False: it was already so (`present`), nothing done.
    pub changed: bool,
    pub detail: String,
}

/// The outcome of bringing a volume up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Up {
    pub steps: Vec<StepDone>,
    /// The loop device mounted at the mount path.
    pub device: PathBuf,
    /// The image's size when it is smaller than configured: it is not grown, only reported.
    pub smaller_than_configured: Option<u64>,
}

fn fail(v: &ActiveVolume, stage: Stage, problem: impl Into<Problem>) -> LifecycleError {
    LifecycleError {
        vfs: v.vfs.clone(),
        volume: v.volume.clone(),
        stage,
        problem: Box::new(problem.into()),
    }
}

/// Reads what the kernel holds for `v`.
pub fn observe(
    v: &ActiveVolume,
    devices: &mut dyn BlockDevices,
    mounts: &mut dyn Mounts,
) -> Result<Observed, LifecycleError> {
    let image = devices
        .inspect_image(&v.name(), &v.image)
        .map_err(|e| fail(v, Stage::Image, e))?;
    let loops = match image {
        Some(_) => devices.loops_of(&v.image),
        None => Vec::new(),
    };
    let table = mounts.mounts().map_err(|e| fail(v, Stage::Mount, e))?;
    let at_target = table.iter().rev().find(|m| m.target == v.mount).cloned();
    let elsewhere = table
        .iter()
        .find(|m| m.target != v.mount && loops.iter().any(|l| Path::new(&m.source) == l))
        .map(|m| m.target.clone());
    Ok(Observed {
        image,
        loops,
        at_target,
        elsewhere,
    })
}

/// What to do to bring `v` up from `seen`; a refusal names the step it concerns.
pub fn plan(v: &ActiveVolume, seen: &Observed) -> Result<Vec<Action>, (Stage, Refusal)> {
    // The mount path first: if it is not ours to take, nothing at all is done.
    if let Some(m) = &seen.at_target
        && !seen.mounted()
    {
        return Err((
            Stage::Mount,
            Refusal::MountPointHeld {
                target: v.mount.clone(),
                holder: m.source.clone(),
                fstype: m.fstype.clone(),
                image: v.image.clone(),
            },
        ));
    }
    if let (Some(elsewhere), false) = (&seen.elsewhere, seen.mounted()) {
        return Err((
            Stage::Mount,
            Refusal::MountedElsewhere {
                image: v.image.clone(),
                elsewhere: elsewhere.clone(),
                target: v.mount.clone(),
            },
        ));
    }
    let mut actions = Vec::new();
    match seen.image {
        None => {
            actions.push(Action::CreateImage { size: v.size_bytes });
            actions.push(Action::Format(v.filesystem));
        }
        Some(info) => {
            if info.size > v.size_bytes {
                return Err((
                    Stage::Image,
                    Refusal::ImageLarger {
                        image: v.image.clone(),
                        found: info.size,
                        configured: v.size_bytes,
                    },
                ));
            }
            match info.filesystem {
                Some(fs) if fs != v.filesystem => {
                    return Err((
                        Stage::FileSystem,
                        Refusal::OtherFileSystem {
                            image: v.image.clone(),
                            found: fs.kernel_name(),
                            configured: v.filesystem.kernel_name(),
                        },
                    ));
                }
                Some(_) => {}
                // Never written to: a blank image (created, then interrupted before mkfs).
                None if info.allocated == 0 => actions.push(Action::Format(v.filesystem)),
                None => {
                    return Err((
                        Stage::FileSystem,
                        Refusal::DataWithoutFileSystem {
                            image: v.image.clone(),
                            allocated: info.allocated,
                        },
                    ));
                }
            }
        }
    }
    if seen.mounted() {
        return Ok(actions);
    }
    match seen.loops.first() {
        Some(device) => actions.push(Action::Mount {
            device: Some(device.clone()),
        }),
        None => {
            actions.push(Action::Attach);
            actions.push(Action::Mount { device: None });
        }
    }
    Ok(actions)
}

/// Brings `v` up: creates, formats, attaches and mounts what is missing.
///
/// # Errors
/// The step that was refused (nothing changed) or failed (what earlier steps made stays: an
/// image, a file system; a loop device attached by this call is released again).
pub fn bring_up(
    v: &ActiveVolume,
    devices: &mut dyn BlockDevices,
    mounts: &mut dyn Mounts,
) -> Result<Up, LifecycleError> {
    let seen = observe(v, devices, mounts)?;
    let actions = plan(v, &seen).map_err(|(stage, r)| fail(v, stage, r))?;
    let name = v.name();
    let present = |stage, detail: String| StepDone {
        stage,
        changed: false,
        detail,
    };
    let done = |stage, detail: String| StepDone {
        stage,
        changed: true,
        detail,
    };
    let mut steps = Vec::new();
    if let Some(info) = seen.image {
        steps.push(present(Stage::Image, format!("{} bytes", info.size)));
        if let Some(fs) = info.filesystem {
            steps.push(present(Stage::FileSystem, fs.kernel_name().to_owned()));
        }
    }
    let mut attached = None;
    let mut device = seen.loops.first().cloned();
    for action in actions {
        match action {
            Action::CreateImage { size } => {
                devices
                    .create_image(&name, &v.image, size)
                    .map_err(|e| fail(v, Stage::Image, e))?;
                steps.push(done(Stage::Image, format!("sparse, {size} bytes")));
            }
            Action::Format(fs) => {
                devices
                    .format(&name, &v.image, fs)
                    .map_err(|e| fail(v, Stage::FileSystem, e))?;
                steps.push(done(Stage::FileSystem, fs.kernel_name().to_owned()));
            }
            Action::Attach => {
                let d = devices
                    .attach(&name, &v.image)
                    .map_err(|e| fail(v, Stage::Loop, e))?;
                steps.push(done(Stage::Loop, d.path.display().to_string()));
                device = Some(d.path.clone());
                attached = Some(d);
            }
            Action::Mount { device: given } => {
                let dev = given
                    .or_else(|| device.clone())
                    .expect("a mount follows an attach or names its device");
                if attached.is_none() {
                    steps.push(present(Stage::Loop, dev.display().to_string()));
                }
                let made_dir = mounts
                    .make_dir(&v.mount)
                    .map_err(|e| fail(v, Stage::Mount, e))?;
                if let Err(e) = mounts.mount_rw(&dev, &v.mount, v.filesystem.kernel_name()) {
                    if made_dir {
                        let _ = mounts.remove_dir(&v.mount);
                    }
                    // Dropping `attached` releases a loop device attached here (autoclear).
                    return Err(fail(v, Stage::Mount, e));
                }
                steps.push(done(
                    Stage::Mount,
                    format!("{} from {}", v.mount.display(), dev.display()),
                ));
                device = Some(dev);
            }
        }
    }
    if seen.mounted() {
        let dev = seen.at_target.as_ref().map(|m| m.source.clone());
        steps.push(present(Stage::Loop, dev.clone().unwrap_or_default()));
        steps.push(present(
            Stage::Mount,
            format!("{} from {}", v.mount.display(), dev.unwrap_or_default()),
        ));
        device = seen.at_target.as_ref().map(|m| PathBuf::from(&m.source));
    }
    // The mount holds the loop device now; it goes away when it is unmounted.
    drop(attached);
    let smaller = seen
        .image
        .map(|i| i.size)
        .filter(|&size| size < v.size_bytes);
    Ok(Up {
        steps,
        device: device.unwrap_or_default(),
        smaller_than_configured: smaller,
    })
}
