//! Taking a volume down (unmount, detach; the image stays), and describing its state.
use std::path::Path;

use super::{ActiveVolume, LifecycleError, Observed, Stage, StepDone, fail, observe};
use crate::{resources::mounts::Mounts, volumes::BlockDevices};

/// Takes `v` down: unmounts it if its image is what is mounted at its mount path, and detaches
/// the image's loop devices that nothing mounts. The image stays (it is data).
pub fn bring_down(
    v: &ActiveVolume,
    devices: &mut dyn BlockDevices,
    mounts: &mut dyn Mounts,
) -> Result<Vec<StepDone>, LifecycleError> {
    let seen = observe(v, devices, mounts)?;
    let mut steps = Vec::new();
    let step = |stage, changed, detail: String| StepDone {
        stage,
        changed,
        detail,
    };
    if seen.mounted() {
        mounts
            .unmount(&v.mount)
            .map_err(|e| fail(v, Stage::Mount, e))?;
        steps.push(step(Stage::Mount, true, v.mount.display().to_string()));
    } else if let Some(m) = &seen.at_target {
        let detail = format!(
            "{} from {} is not this volume's; left alone",
            m.fstype, m.source
        );
        steps.push(step(Stage::Mount, false, detail));
    }
    let table = mounts.mounts().map_err(|e| fail(v, Stage::Mount, e))?;
    for l in &seen.loops {
        if let Some(m) = table.iter().find(|m| Path::new(&m.source) == l) {
            let detail = format!("{} stays: mounted at {}", l.display(), m.target.display());
            steps.push(step(Stage::Loop, false, detail));
            continue;
        }
        devices
            .detach(&v.name(), l)
            .map_err(|e| fail(v, Stage::Loop, e))?;
        steps.push(step(Stage::Loop, true, l.display().to_string()));
    }
    Ok(steps)
}

/// A volume's state in one line, for `vfsdr status`: `mounted at X via /dev/loopN`, or what is
/// missing.
pub fn describe(v: &ActiveVolume, seen: &Observed) -> (bool, String) {
    if seen.mounted() {
        let dev = seen.at_target.as_ref().map_or("", |m| m.source.as_str());
        return (true, format!("mounted at {} via {dev}", v.mount.display()));
    }
    let mut missing = Vec::new();
    match seen.image {
        None => missing.push(format!("no image {}", v.image.display())),
        Some(i) if i.filesystem.is_none() => missing.push("no file system".to_owned()),
        Some(_) => {}
    }
    if seen.loops.is_empty() {
        missing.push("not attached".to_owned());
    }
    match &seen.at_target {
        Some(m) => missing.push(format!(
            "{} is held by {} ({})",
            v.mount.display(),
            m.source,
            m.fstype
        )),
        None => missing.push(format!("not mounted at {}", v.mount.display())),
    }
    (false, missing.join(", "))
}
