//! What a [`Pair`](super::Pair) builds, and the two sites' configuration bodies for it.
use std::path::Path;

use crate::{GIB, MIB, Site, service_address};

/// What to build: the VFS, its volumes (name, size), and extra configuration fields.
#[derive(Clone, Debug)]
pub struct PairOptions {
    /// Test or bench name, part of every lab name.
    pub name: String,
    /// The VFS's name.
    pub vfs: String,
    /// The VFS's volumes: name and size (a whole number of MiB).
    pub volumes: Vec<(String, u64)>,
    /// Extra lines under the VFS's `replication:` (each `key: value`), e.g. `compression: lz4`.
    pub replication: Vec<String>,
    /// `replication.interval` (default `1h`: cycles run on `replicate --now` only).
    pub interval: String,
    /// Size of each site's sparse pool file.
    pub pool_size: u64,
    /// Lines under the VFS's `snapshots:` (e.g. `retention: [{every: all, for: 1d}]`); none:
    /// the default retention grid.
    pub snapshots: Vec<String>,
    /// Extra lines under the DR site's `resources.pool:`, e.g. `reserve: 16MiB`.
    pub dr_pool: Vec<String>,
    /// Extra lines under the DR site's `resources:`, e.g.
    /// `links: [{name: eth0, networks: [lan]}]`.
    pub dr_resources: Vec<String>,
    /// The active site's agent creates, formats and mounts the volumes itself, under its
    /// `resources.mount_root` (the volumes have no `mount:`), and the DR site mounts its reserved
    /// copies under its own; default: the lab pre-creates and mounts them (see the module).
    pub agent_volumes: bool,
}

impl PairOptions {
    /// VFS `vfs` with `volumes` (name, size), replicated every hour, on 8 GiB pools.
    pub fn new(name: &str, vfs: &str, volumes: &[(&str, u64)]) -> Self {
        Self {
            name: name.to_string(),
            vfs: vfs.to_string(),
            volumes: volumes.iter().map(|(n, s)| (n.to_string(), *s)).collect(),
            replication: Vec::new(),
            interval: "1h".to_string(),
            pool_size: 8 * GIB,
            snapshots: Vec::new(),
            dr_pool: Vec::new(),
            dr_resources: Vec::new(),
            agent_volumes: false,
        }
    }

    /// The active site's configuration body: its `resources:` (with `mount_root`, if any) and
    /// the VFS, whose volumes are mounted at `mounts/<volume>` unless the agent mounts them.
    pub(super) fn active_body(&self, a: &Site, mount_root: Option<&Path>, mounts: &Path) -> String {
        let vfs = &self.vfs;
        let mut volumes = String::new();
        for (name, size) in &self.volumes {
            let mount = match self.agent_volumes {
                true => String::new(),
                false => format!(", mount: {}", mounts.join(name).display()),
            };
            volumes.push_str(&format!(
                "      - {{name: {name}, size: {}MiB{mount}}}\n",
                size / MIB
            ));
        }
        let mut replication = format!("      peer: site-b\n      interval: {}\n", self.interval);
        replication.push_str(&lines("      ", &self.replication));
        if !self.snapshots.is_empty() {
            replication.push_str("    snapshots:\n");
            replication.push_str(&lines("      ", &self.snapshots));
        }
        format!(
            "{}vfs:\n  - name: {vfs}\n    volumes:\n{volumes}    \
             interfaces:\n      - {{name: smb0, address: {}/24, network: lan}}\n    smb:\n      netbios_name: {}\n    \
             replication:\n{replication}",
            resources(a, mount_root, &[], &[]),
            service_address(0),
            vfs.to_uppercase().replace(['-', '_'], ""),
        )
    }

    /// The DR site's configuration body: its `resources:`.
    pub(super) fn dr_body(&self, b: &Site, mount_root: Option<&Path>) -> String {
        resources(b, mount_root, &self.dr_pool, &self.dr_resources)
    }
}

/// A `resources:` section: the site's pool with `pool` lines under it, `mount_root` if any, and
/// `extra` lines.
fn resources(site: &Site, mount_root: Option<&Path>, pool: &[String], extra: &[String]) -> String {
    let mut text = format!(
        "resources:\n  pool:\n    path: {}\n{}",
        site.pool().mount_point().display(),
        lines("    ", pool)
    );
    if let Some(root) = mount_root {
        text.push_str(&format!("  mount_root: {}\n", root.display()));
    }
    text + &lines("  ", extra)
}

/// `lines`, each indented by `indent` and ended by a newline.
fn lines(indent: &str, lines: &[String]) -> String {
    lines.iter().map(|l| format!("{indent}{l}\n")).collect()
}
