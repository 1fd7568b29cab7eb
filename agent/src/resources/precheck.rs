//! The precheck: does this site have what VFS V needs to give its users access here? A pure
//! function of V's definition, the site's resources, the reservations held, and what the kernel
//! shows through the `Links` and `Mounts` seams.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    mounts::{MountError, Mounts},
    net::{Links, NetError},
};
use crate::{
    config::{Resources, VfsDef},
    state::ResourceKind,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    Failover,
    Change,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// No link of this site carries the interface's network.
    NoLinkForNetwork,
    /// A configured link is not in the kernel.
    LinkMissing,
    LinkDown,
    NoCarrier,
    /// The link is reserved by another VFS.
    LinkReserved,
    /// The VFS's address is already configured at this site.
    AddressInUse,
    ReplicaMissing,
    /// Something not reserved for this VFS is mounted at its mount point.
    MountPointBusy,
    /// The mount point is reserved by another VFS.
    MountPointReserved,
    FsUnsupported,
    NoPool,
    PoolTooSmall,
}

/// One way in which this site falls short for the VFS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discrepancy {
    pub kind: Kind,
    /// What it is about: `interface smb0`, `address 198.18.0.100`, `volume data`, `pool`.
    pub resource: String,
    pub needed: String,
    pub found: String,
    /// Whether users would not get unrestricted access after a failover.
    pub blocks_access: bool,
    /// The VFS holding the resource, for `*_reserved`.
    pub holder: Option<String>,
}

/// A link the reservation will create for one interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedLink {
    pub interface: String,
    pub address: std::net::Ipv4Addr,
    pub prefix_len: u8,
    /// The site link it goes on.
    pub parent: String,
    /// The macvlan, named after the VFS.
    pub name: String,
}

/// A read-only mount the reservation will hold for one volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedMount {
    pub volume: String,
    pub image: PathBuf,
    pub target: PathBuf,
    pub fstype: String,
    pub options: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub vfs: String,
    pub site: String,
    pub purpose: Purpose,
    pub sufficient: bool,
    pub discrepancies: Vec<Discrepancy>,
    /// What can be reserved (all of it when sufficient).
    pub links: Vec<PlannedLink>,
    pub mounts: Vec<PlannedMount>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("VFS {vfs}: {what}")]
    Conflict { vfs: String, what: String },
}

/// Where a VFS volume's replica lives in a pool.
pub fn replica_image(pool: &Path, vfs: &str, volume: &str) -> PathBuf {
    pool.join("replicas")
        .join(vfs)
        .join(format!("{volume}.img"))
}

/// The macvlan of interface `index` of `vfs` (VFS names are at most 11 characters).
pub fn link_name(vfs: &str, index: usize) -> String {
    format!("{vfs}-{index}")
}

/// Mount options that let a clone of a live file system mount read-only.
pub fn ro_options(fstype: &str) -> &'static str {
    match fstype {
        "xfs" => "nouuid,norecovery",
        "ext4" => "noload",
        _ => "",
    }
}

/// What the precheck needs besides the kernel.
pub struct Site<'a> {
    pub name: &'a str,
    pub resources: &'a Resources,
    /// Which VFS holds a resource, from the state store.
    pub holder: &'a dyn Fn(ResourceKind, &str) -> Option<String>,
    /// The image of a volume in the VFS's latest snapshot at this site, if it has one: reserved
    /// mount points hold the latest consistent state, never the replica being written.
    pub latest_image: &'a dyn Fn(&str, &str) -> Option<PathBuf>,
}

pub fn precheck(
    site: &Site,
    def: &VfsDef,
    purpose: Purpose,
    links: &mut dyn Links,
    mounts: &mut dyn Mounts,
) -> Result<Report, ResourceError> {
    let mut r = Report {
        vfs: def.name.clone(),
        site: site.name.to_owned(),
        purpose,
        sufficient: false,
        discrepancies: Vec::new(),
        links: Vec::new(),
        mounts: Vec::new(),
    };
    let other_holder = |kind, res: &str| (site.holder)(kind, res).filter(|h| *h != def.name);
    let kernel_links = links.links()?;
    let addresses = links.addresses()?;

    for (i, iface) in def.interfaces.iter().enumerate() {
        let name = link_name(&def.name, i);
        let carriers: Vec<_> = site
            .resources
            .links
            .iter()
            .filter(|l| l.networks.contains(&iface.network))
            .collect();
        let mut problems = Vec::new();
        let mut chosen = None;
        for l in &carriers {
            let k = kernel_links.iter().find(|k| k.name == l.name);
            let problem = match (k, other_holder(ResourceKind::Link, &l.name)) {
                (_, Some(h)) => Some((
                    Kind::LinkReserved,
                    format!("{} is reserved by {h}", l.name),
                    Some(h),
                )),
                (None, _) => Some((
                    Kind::LinkMissing,
                    format!("{} does not exist", l.name),
                    None,
                )),
                (Some(k), _) if !k.up => {
                    Some((Kind::LinkDown, format!("{} is down", l.name), None))
                }
                (Some(k), _) if !k.carrier => {
                    Some((Kind::NoCarrier, format!("{} has no carrier", l.name), None))
                }
                _ => None,
            };
            match problem {
                None => {
                    chosen = Some(l.name.clone());
                    break;
                }
                Some(p) => problems.push(p),
            }
        }
        match (chosen, carriers.is_empty()) {
            (Some(parent), _) => r.links.push(PlannedLink {
                interface: iface.name.clone(),
                address: iface.address,
                prefix_len: iface.prefix_len,
                parent,
                name: name.clone(),
            }),
            (None, true) => r.discrepancies.push(Discrepancy {
                kind: Kind::NoLinkForNetwork,
                resource: format!("interface {}", iface.name),
                needed: format!("a link carrying network {}", iface.network),
                found: format!("no link of site {} carries {}", site.name, iface.network),
                blocks_access: true,
                holder: None,
            }),
            (None, false) => {
                let (kind, _, holder) = problems[0].clone();
                r.discrepancies.push(Discrepancy {
                    kind,
                    resource: format!("interface {}", iface.name),
                    needed: format!(
                        "an up link with carrier carrying network {}, free for {}",
                        iface.network, def.name
                    ),
                    found: problems
                        .iter()
                        .map(|p| p.1.as_str())
                        .collect::<Vec<_>>()
                        .join("; "),
                    blocks_access: true,
                    holder,
                });
            }
        }
        for a in addresses
            .iter()
            .filter(|a| a.address == iface.address && a.link != name)
        {
            r.discrepancies.push(Discrepancy {
                kind: Kind::AddressInUse,
                resource: format!("address {}", iface.address),
                needed: format!("{} not configured at site {}", iface.address, site.name),
                found: format!("{}/{} is configured on {}", a.address, a.prefix_len, a.link),
                blocks_access: true,
                holder: None,
            });
        }
    }

    let Some(pool) = &site.resources.pool else {
        r.discrepancies.push(Discrepancy {
            kind: Kind::NoPool,
            resource: "pool".into(),
            needed: format!("a pool for the replicas of {} volume(s)", def.volumes.len()),
            found: format!("site {} has no pool configured", site.name),
            blocks_access: true,
            holder: None,
        });
        r.sufficient = false;
        return Ok(r);
    };
    let mounted = mounts.mounts()?;
    let filesystems = mounts.filesystems()?;
    let mut room_needed = pool.reserve_bytes;
    for vol in &def.volumes {
        let image = replica_image(&pool.path, &def.name, &vol.name);
        let fstype = vol.filesystem.kernel_name();
        let mut usable = true;
        match mounts.file(&image)? {
            Some(f) => room_needed += vol.size_bytes.saturating_sub(f.allocated),
            None => {
                room_needed += vol.size_bytes;
                usable = false;
                r.discrepancies.push(Discrepancy {
                    kind: Kind::ReplicaMissing,
                    resource: format!("volume {}", vol.name),
                    needed: format!("replica image {}", image.display()),
                    found: "no such file".into(),
                    blocks_access: true,
                    holder: None,
                });
            }
        }
        // A relative mount is under this site's mount root.
        let mount = vol.mount_at(&site.resources.mount_root);
        let target = mount.display().to_string();
        if let Some(h) = other_holder(ResourceKind::Mount, &target) {
            usable = false;
            r.discrepancies.push(Discrepancy {
                kind: Kind::MountPointReserved,
                resource: format!("mount point {target}"),
                needed: format!("{target} free for volume {} of {}", vol.name, def.name),
                found: format!("reserved by {h}"),
                blocks_access: true,
                holder: Some(h),
            });
        } else if let Some(m) = mounted.iter().rev().find(|m| m.target == mount) {
            // What a reservation of this VFS holds there (a snapshot, refreshed after each
            // cycle) is its own.
            let ours =
                (site.holder)(ResourceKind::Mount, &target).as_deref() == Some(def.name.as_str());
            if !ours {
                usable = false;
                r.discrepancies.push(Discrepancy {
                    kind: Kind::MountPointBusy,
                    resource: format!("mount point {target}"),
                    needed: format!("{target} free for volume {} of {}", vol.name, def.name),
                    found: format!("{} from {} is mounted there", m.fstype, m.source),
                    blocks_access: true,
                    holder: None,
                });
            }
        }
        if !filesystems.iter().any(|f| f == fstype) {
            usable = false;
            r.discrepancies.push(Discrepancy {
                kind: Kind::FsUnsupported,
                resource: format!("volume {}", vol.name),
                needed: format!("file system {fstype} supported by this kernel"),
                found: "not in /proc/filesystems".into(),
                blocks_access: true,
                holder: None,
            });
        }
        if usable {
            r.mounts.push(PlannedMount {
                volume: vol.name.clone(),
                image: (site.latest_image)(&def.name, &vol.name).unwrap_or(image),
                target: mount,
                fstype: fstype.into(),
                options: ro_options(fstype).into(),
            });
        }
    }
    let space = mounts.space(&pool.path)?;
    if space.free < room_needed {
        r.discrepancies.push(Discrepancy {
            kind: Kind::PoolTooSmall,
            resource: "pool".into(),
            needed: format!(
                "{} free in {} (volumes of {} plus the reserve of {})",
                gib(room_needed),
                pool.path.display(),
                def.name,
                gib(pool.reserve_bytes)
            ),
            found: format!("{} free of {}", gib(space.free), gib(space.total)),
            // Users reach their files; writes fail once the pool is full.
            blocks_access: false,
            holder: None,
        });
    }
    r.sufficient = r.discrepancies.is_empty();
    Ok(r)
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}
