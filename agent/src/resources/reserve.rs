//! Reservation: the links and mounts a precheck planned are created in the kernel and recorded
//! in the state store; release removes exactly those; reconcile brings the kernel back in line
//! with the store after a restart. Every step says whether it changed anything.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    mounts::Mounts,
    net::Links,
    precheck::{PlannedLink, PlannedMount, Report, ResourceError},
};
use crate::state::{ResourceKind, Store};

/// What happened to one resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub resource: String,
    /// `created`, `present` (already there, nothing done), `removed`, `absent`,
    /// `recreated`, `changed by someone else`.
    pub action: String,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub vfs: String,
    pub report: Report,
    /// False when resources were short and the operator did not choose to proceed.
    pub reserved: bool,
    pub steps: Vec<Step>,
}

fn step(resource: impl Into<String>, action: &str, detail: impl Into<String>) -> Step {
    Step {
        resource: resource.into(),
        action: action.into(),
        detail: detail.into(),
    }
}

/// Reserves what `report` planned. With shortages, only when `proceed`; the shortages are
/// recorded with the reservation. On any error, what this call created is removed again.
pub fn reserve(
    report: Report,
    proceed: bool,
    store: &mut Store,
    links: &mut dyn Links,
    mounts: &mut dyn Mounts,
) -> Result<Outcome, ResourceError> {
    let vfs = report.vfs.clone();
    if !report.sufficient && !proceed {
        return Ok(Outcome {
            vfs,
            report,
            reserved: false,
            steps: vec![],
        });
    }
    let mut steps = Vec::new();
    let mut undo = Undo::default();
    let result = (|| {
        for l in &report.links {
            steps.push(ensure_link(l, links, &mut undo)?);
        }
        let held: Vec<PathBuf> = store
            .reservations(&vfs)?
            .iter()
            .filter(|r| r.kind == ResourceKind::Mount)
            .map(|r| PathBuf::from(&r.resource))
            .collect();
        let mut created_dirs = Vec::new();
        for m in &report.mounts {
            let (s, created) = ensure_mount(m, held.contains(&m.target), mounts, &mut undo)?;
            steps.push(s);
            created_dirs.push(created);
        }
        let mut items = Vec::new();
        let mut parents: Vec<&str> = report.links.iter().map(|l| l.parent.as_str()).collect();
        parents.dedup();
        for parent in parents {
            let on: Vec<&PlannedLink> =
                report.links.iter().filter(|l| l.parent == parent).collect();
            items.push((
                ResourceKind::Link,
                parent.to_owned(),
                json!({ "links": on }),
            ));
        }
        // A mount point found in place keeps what was recorded when it was created.
        let existing = store.reservations(&vfs)?;
        for (m, created) in report.mounts.iter().zip(created_dirs) {
            let target = m.target.display().to_string();
            let created = created
                || existing.iter().any(|r| {
                    r.kind == ResourceKind::Mount
                        && r.resource == target
                        && r.detail["created_dir"] == true
                });
            items.push((
                ResourceKind::Mount,
                m.target.display().to_string(),
                json!({ "mount": m, "created_dir": created }),
            ));
        }
        let shortages: Vec<serde_json::Value> =
            report.discrepancies.iter().map(|d| json!(d)).collect();
        store.reserve(&vfs, &items, &shortages)?;
        Ok::<(), ResourceError>(())
    })();
    if let Err(e) = result {
        undo.run(links, mounts);
        return Err(e);
    }
    Ok(Outcome {
        vfs,
        report,
        reserved: true,
        steps,
    })
}

/// Kernel objects created by the current call, removed again if it fails.
#[derive(Default)]
struct Undo {
    links: Vec<String>,
    mounts: Vec<(PathBuf, bool)>,
}

impl Undo {
    fn run(self, links: &mut dyn Links, mounts: &mut dyn Mounts) {
        for (target, dir) in self.mounts.into_iter().rev() {
            let _ = mounts.unmount(&target);
            if dir {
                let _ = mounts.remove_dir(&target);
            }
        }
        for l in self.links.into_iter().rev() {
            let _ = links.delete_link(&l);
        }
    }
}

fn ensure_link(
    l: &PlannedLink,
    links: &mut dyn Links,
    undo: &mut Undo,
) -> Result<Step, ResourceError> {
    let all = links.links()?;
    let parent = all.iter().find(|k| k.name == l.parent).map(|k| k.index);
    if let Some(k) = all.iter().find(|k| k.name == l.name) {
        if k.kind.as_deref() == Some("macvlan") && k.parent.is_some() && k.parent == parent {
            return Ok(step(
                format!("link {}", l.name),
                "present",
                format!("macvlan on {}", l.parent),
            ));
        }
        return Err(ResourceError::Conflict {
            vfs: l.name.split('-').next().unwrap_or_default().to_owned(),
            what: format!(
                "link {} exists but is not a macvlan on {} ({:?} on index {:?})",
                l.name, l.parent, k.kind, k.parent
            ),
        });
    }
    links.create_macvlan(&l.parent, &l.name)?;
    undo.links.push(l.name.clone());
    Ok(step(
        format!("link {}", l.name),
        "created",
        format!(
            "macvlan on {}, down, for {}/{} ({})",
            l.parent, l.address, l.prefix_len, l.interface
        ),
    ))
}

/// Mounts `m` unless it is there. `held`: the VFS already holds this mount point, and what is
/// mounted there is its (possibly older) snapshot.
fn ensure_mount(
    m: &PlannedMount,
    held: bool,
    mounts: &mut dyn Mounts,
    undo: &mut Undo,
) -> Result<(Step, bool), ResourceError> {
    let resource = format!("mount {}", m.target.display());
    if let Some(e) = mounts
        .mounts()?
        .into_iter()
        .rev()
        .find(|e| e.target == m.target)
        && (held || mounts.loop_backing(&e.source).as_deref() == Some(m.image.as_path()))
    {
        return Ok((
            step(
                resource,
                "present",
                format!("{} read-only from {}", m.fstype, e.source),
            ),
            false,
        ));
    }
    let created = mounts.make_dir(&m.target)?;
    let device = match mounts.mount_image_ro(&m.image, &m.target, &m.fstype, &m.options) {
        Ok(d) => d,
        Err(e) => {
            if created {
                let _ = mounts.remove_dir(&m.target);
            }
            return Err(e.into());
        }
    };
    undo.mounts.push((m.target.clone(), created));
    let detail = format!(
        "{} read-only ({}) from {} on {}",
        m.fstype,
        m.options,
        m.image.display(),
        device.display()
    );
    Ok((step(resource, "created", detail), created))
}

fn planned_links(detail: &serde_json::Value) -> Vec<PlannedLink> {
    serde_json::from_value(detail["links"].clone()).unwrap_or_default()
}

fn planned_mount(detail: &serde_json::Value) -> Option<(PlannedMount, bool)> {
    let m = serde_json::from_value(detail["mount"].clone()).ok()?;
    Some((m, detail["created_dir"].as_bool().unwrap_or(false)))
}

/// Removes exactly what is reserved for `vfs`, then forgets the reservation.
pub fn release(
    vfs: &str,
    store: &mut Store,
    links: &mut dyn Links,
    mounts: &mut dyn Mounts,
) -> Result<Vec<Step>, ResourceError> {
    let mut steps = Vec::new();
    let kernel = links.links()?;
    for r in store.reservations(vfs)? {
        match r.kind {
            ResourceKind::Link => {
                for l in planned_links(&r.detail) {
                    let res = format!("link {}", l.name);
                    if kernel
                        .iter()
                        .any(|k| k.name == l.name && k.kind.as_deref() == Some("macvlan"))
                    {
                        links.delete_link(&l.name)?;
                        steps.push(step(res, "removed", format!("macvlan on {}", l.parent)));
                    } else {
                        steps.push(step(res, "absent", "nothing to remove"));
                    }
                }
            }
            ResourceKind::Mount => {
                let Some((m, created)) = planned_mount(&r.detail) else {
                    steps.push(step(
                        format!("mount {}", r.resource),
                        "absent",
                        "unreadable record",
                    ));
                    continue;
                };
                let res = format!("mount {}", m.target.display());
                let ours = mounts
                    .mounts()?
                    .into_iter()
                    .rev()
                    .find(|e| e.target == m.target)
                    .is_some_and(|e| {
                        mounts.loop_backing(&e.source).as_deref() == Some(m.image.as_path())
                    });
                if ours {
                    mounts.unmount(&m.target)?;
                    steps.push(step(
                        res.clone(),
                        "removed",
                        format!("read-only mount of {}", m.image.display()),
                    ));
                } else {
                    steps.push(step(
                        res.clone(),
                        "absent",
                        "not mounted from its replica; left alone",
                    ));
                }
                if created && !ours_still_mounted(mounts, &m)? {
                    match mounts.remove_dir(&m.target) {
                        Ok(()) => steps.push(step(res, "removed", "mount point directory")),
                        Err(e) => steps.push(step(res, "absent", format!("directory kept: {e}"))),
                    }
                }
            }
        }
    }
    store.release(vfs)?;
    Ok(steps)
}

fn ours_still_mounted(mounts: &mut dyn Mounts, m: &PlannedMount) -> Result<bool, ResourceError> {
    Ok(mounts.mounts()?.iter().any(|e| e.target == m.target))
}

/// Brings the kernel in line with the reservations in the store: recreates what is missing,
/// reports (and leaves alone) what someone else changed.
pub fn reconcile(
    store: &Store,
    links: &mut dyn Links,
    mounts: &mut dyn Mounts,
) -> Result<Vec<(String, Step)>, ResourceError> {
    let mut out = Vec::new();
    for r in store.all_reservations()? {
        match r.kind {
            ResourceKind::Link => {
                for l in planned_links(&r.detail) {
                    let mut undo = Undo::default();
                    let s = match ensure_link(&l, links, &mut undo) {
                        Ok(s) if s.action == "created" => step(s.resource, "recreated", s.detail),
                        Ok(s) => s,
                        Err(e) => step(
                            format!("link {}", l.name),
                            "changed by someone else",
                            e.to_string(),
                        ),
                    };
                    out.push((r.vfs.clone(), s));
                }
            }
            ResourceKind::Mount => {
                let Some((m, _)) = planned_mount(&r.detail) else {
                    continue;
                };
                let busy = mounts
                    .mounts()?
                    .into_iter()
                    .rev()
                    .find(|e| e.target == m.target);
                let s = match busy {
                    Some(e)
                        if mounts.loop_backing(&e.source).as_deref() != Some(m.image.as_path()) =>
                    {
                        step(
                            format!("mount {}", m.target.display()),
                            "changed by someone else",
                            format!("{} from {} is mounted there", e.fstype, e.source),
                        )
                    }
                    _ => {
                        let mut undo = Undo::default();
                        match ensure_mount(&m, false, mounts, &mut undo) {
                            Ok((s, _)) if s.action == "created" => {
                                step(s.resource, "recreated", s.detail)
                            }
                            Ok((s, _)) => s,
                            Err(e) => step(
                                format!("mount {}", m.target.display()),
                                "missing",
                                e.to_string(),
                            ),
                        }
                    }
                };
                out.push((r.vfs.clone(), s));
            }
        }
    }
    Ok(out)
}

/// After a snapshot is committed at this DR site: every mount point reserved for `vfs` is
/// switched to the snapshot's image of its volume (unmount the older one, mount the new one
/// read-only, record it). A mount point in use keeps its older snapshot until the next time.
pub fn refresh(
    vfs: &str,
    latest: &crate::state::Snapshot,
    store: &mut Store,
    mounts: &mut dyn Mounts,
) -> Result<Vec<Step>, ResourceError> {
    let mut steps = Vec::new();
    let shortages = store.shortages(vfs)?;
    for r in store.reservations(vfs)? {
        if r.kind != ResourceKind::Mount {
            continue;
        }
        let Some((mut m, created)) = planned_mount(&r.detail) else {
            continue;
        };
        let Some(image) = latest
            .images
            .iter()
            .find(|i| i.volume == m.volume)
            .map(|i| i.path.clone())
        else {
            continue;
        };
        let resource = format!("mount {}", m.target.display());
        let current = mounts
            .mounts()?
            .into_iter()
            .rev()
            .find(|e| e.target == m.target);
        if let Some(e) = &current
            && mounts.loop_backing(&e.source).as_deref() == Some(image.as_path())
        {
            steps.push(step(resource, "present", format!("snapshot {}", latest.id)));
            continue;
        }
        if current.is_some()
            && let Err(e) = mounts.unmount(&m.target)
        {
            steps.push(step(
                resource,
                "busy",
                format!("keeps the older state: {e}"),
            ));
            continue;
        }
        mounts.mount_image_ro(&image, &m.target, &m.fstype, &m.options)?;
        m.image = image;
        let item = (
            ResourceKind::Mount,
            r.resource.clone(),
            json!({ "mount": m, "created_dir": created }),
        );
        store.reserve(vfs, &[item], &shortages)?;
        steps.push(step(
            resource,
            "refreshed",
            format!("snapshot {} read-only", latest.id),
        ));
    }
    Ok(steps)
}
