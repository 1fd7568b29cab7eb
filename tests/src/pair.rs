//! Two lab sites replicating one VFS: the active site `site-a` with the VFS's volumes, the DR site
//! `site-b`, their certificates, configurations and agents. Shared by the replication root tests
//! and `cargo xtask bench replication`.
//!
//! Volumes are built the way an operator pre-creates them: the image at
//! `<pool>/volumes/<vfs>/<volume>.img` on the active site's pool, formatted and mounted at an
//! absolute path under the lab directory (`<lab dir>/vfs-mnt/<vfs>/<volume>`), named with that
//! `mount:` in the agent's configuration.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use vfsdr_lab::{MIB, pair::{Pair, PairOptions}};
//! let pair = Pair::start(PairOptions::new("my-test", "fs1", &[("data", 512 * MIB)]))?;
//! std::fs::write(pair.volumes[0].mount_point().join("f"), b"hi")?;
//! let report = pair.replicate_now()?;
//! let image = pair.snapshot_image(report["snapshot"].as_u64().unwrap(), "data");
//! pair.with_image_mounted(&image, |dir| Ok(assert!(dir.join("f").exists())))?;
//! # Ok(()) }
//! ```
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, ensure};
use serde_json::Value;

use crate::{
    GIB, Lab, MIB, Site, SiteOptions, Volume,
    agent::{Agent, make_certs, write_config_with_peers},
    check::{sh, wait_for},
    service_address,
};

/// What to build: the VFS, its volumes (name, size), and extra `replication:` fields.
#[derive(Clone, Debug)]
pub struct PairOptions {
    /// Test or bench name, part of every lab name.
    pub name: String,
    pub vfs: String,
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
}

impl PairOptions {
    pub fn new(name: &str, vfs: &str, volumes: &[(&str, u64)]) -> Self {
        Self {
            name: name.to_string(),
            vfs: vfs.to_string(),
            volumes: volumes.iter().map(|(n, s)| (n.to_string(), *s)).collect(),
            replication: Vec::new(),
            interval: "1h".to_string(),
            pool_size: 8 * GIB,
            snapshots: Vec::new(),
        }
    }
}

/// Two sites replicating one VFS. Fields drop in order: agents, volumes, sites, lab.
pub struct Pair {
    pub agent_a: Agent,
    pub agent_b: Agent,
    /// The VFS's volumes at the active site, in the order of [`PairOptions::volumes`].
    pub volumes: Vec<Volume>,
    pub a: Site,
    pub b: Site,
    pub lab: Lab,
    pub options: PairOptions,
    /// The active site's configuration file (rewrite it and send SIGHUP to change the VFS).
    pub a_config: PathBuf,
}

impl Pair {
    /// Builds the lab, the volumes, the certificates and configurations, starts both agents and
    /// waits until the DR site knows the VFS.
    pub fn start(options: PairOptions) -> anyhow::Result<Pair> {
        let lab = Lab::new(&options.name)?;
        let site_options = SiteOptions {
            pool_size: options.pool_size,
        };
        let a = lab.add_site_with("site-a", site_options.clone())?;
        let b = lab.add_site_with("site-b", site_options)?;
        let certs = lab.dir().join("certs");
        std::fs::create_dir_all(&certs)?;
        make_certs(&certs, &["site-a", "site-b"])?;
        let vfs = &options.vfs;
        let images_dir = a.pool().mount_point().join("volumes").join(vfs);
        let mounts_dir = lab.dir().join("vfs-mnt").join(vfs);
        std::fs::create_dir_all(&images_dir)?;
        std::fs::create_dir_all(&mounts_dir)?;
        let mut volumes = Vec::new();
        let mut volume_lines = String::new();
        for (name, size) in &options.volumes {
            ensure!(
                size % MIB == 0,
                "volume {name}: size {size} is not a whole MiB"
            );
            let image = images_dir.join(format!("{name}.img"));
            let mount = mounts_dir.join(name);
            volumes.push(
                Volume::create(&image, &mount, *size)
                    .with_context(|| format!("cannot create volume {vfs}/{name}"))?,
            );
            volume_lines.push_str(&format!(
                "      - {{name: {name}, size: {}MiB, mount: {}}}\n",
                size / MIB,
                mount.display()
            ));
        }
        let mut replication = format!("      peer: site-b\n      interval: {}\n", options.interval);
        for line in &options.replication {
            replication.push_str(&format!("      {line}\n"));
        }
        if !options.snapshots.is_empty() {
            replication.push_str("    snapshots:\n");
            for line in &options.snapshots {
                replication.push_str(&format!("      {line}\n"));
            }
        }
        let body = format!(
            "resources:\n  pool:\n    path: {}\nvfs:\n  - name: {vfs}\n    volumes:\n{volume_lines}    \
             interfaces:\n      - {{name: smb0, address: {}/24, network: lan}}\n    smb:\n      netbios_name: {}\n    \
             replication:\n{replication}",
            a.pool().mount_point().display(),
            service_address(0),
            vfs.to_uppercase().replace(['-', '_'], ""),
        );
        let a_config = write_config_with_peers(&a, &certs, &[&b], &body)?;
        let b_config = write_config_with_peers(
            &b,
            &certs,
            &[&a],
            &format!(
                "resources:\n  pool:\n    path: {}\n",
                b.pool().mount_point().display()
            ),
        )?;
        let agent_b = Agent::start(&b, &b_config)?;
        let agent_a = Agent::start(&a, &a_config)?;
        wait_for(
            &format!("the definition of {vfs} at site-b"),
            Duration::from_secs(30),
            || Ok(agent_b.cli(["vfs"])?.contains(vfs.as_str())),
        )?;
        Ok(Pair {
            agent_a,
            agent_b,
            volumes,
            a,
            b,
            lab,
            options,
            a_config,
        })
    }

    pub fn vfs(&self) -> &str {
        &self.options.vfs
    }

    /// `vfsdr replicate VFS --now --json` at the active site: the cycle report (`cycle`,
    /// `snapshot`, `full`, `changed_bytes`, `wire_bytes`, `freeze_window_ms`, `duration_ms`,
    /// `point_unix_s`).
    pub fn replicate_now(&self) -> anyhow::Result<Value> {
        let out = self
            .agent_a
            .cli(["replicate", self.vfs(), "--now", "--json"])?;
        serde_json::from_str(&out).with_context(|| format!("bad cycle report: {out}"))
    }

    /// The active site's `vfsdr status --json`.
    pub fn status_a(&self) -> anyhow::Result<Value> {
        self.agent_a.status()
    }

    /// The ids of the DR site's committed snapshots of the VFS, oldest first.
    pub fn snapshots(&self) -> anyhow::Result<Vec<u64>> {
        let out = self.agent_b.cli(["snapshots", self.vfs(), "--json"])?;
        let listed: Value = serde_json::from_str(&out)?;
        Ok(listed
            .as_array()
            .with_context(|| format!("snapshot list is not an array: {out}"))?
            .iter()
            .filter_map(|s| s["id"].as_u64())
            .collect())
    }

    /// A volume's image in DR snapshot `id`.
    pub fn snapshot_image(&self, id: u64, volume: &str) -> PathBuf {
        self.b
            .pool()
            .mount_point()
            .join(format!("snapshots/{}/{id}/{volume}.img", self.vfs()))
    }

    /// A volume's point-in-time clone of `cycle` at the active site (kept until the next cycle
    /// is acknowledged).
    pub fn clone_image(&self, cycle: u64, volume: &str) -> PathBuf {
        self.a
            .pool()
            .mount_point()
            .join(format!("clones/{}/{cycle}/{volume}.img", self.vfs()))
    }

    /// Mounts a snapshot or clone image read-only (`ro,nouuid,norecovery`: a clone of a frozen
    /// XFS) at a directory of the lab, runs `f` on it, and unmounts, also when `f` fails.
    pub fn with_image_mounted<T>(
        &self,
        image: &Path,
        f: impl FnOnce(&Path) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        with_image_mounted(image, &self.lab.dir().join("check"), f)
    }
}

/// Mounts `image` read-only (`ro,nouuid,norecovery,loop`) at `at` (created if missing), runs `f`,
/// unmounts (the loop device goes with it).
pub fn with_image_mounted<T>(
    image: &Path,
    at: &Path,
    f: impl FnOnce(&Path) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    std::fs::create_dir_all(at)?;
    sh(&format!(
        "mount -o ro,nouuid,norecovery,loop '{}' '{}'",
        image.display(),
        at.display()
    ))?;
    let r = f(at);
    let u = sh(&format!("umount '{}'", at.display()));
    let r = r?;
    u?;
    Ok(r)
}
