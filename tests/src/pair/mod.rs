//! Two lab sites replicating one VFS: the active site `site-a` with the VFS's volumes, the DR site
//! `site-b`, their certificates, configurations and agents. The one fixture of the root tests and
//! benches that need two sites (`cargo xtask bench replication`, among others).
//!
//! By default volumes are built the way an operator pre-creates them: the image at
//! `<pool>/volumes/<vfs>/<volume>.img` on the active site's pool, formatted and mounted at an
//! absolute path under the lab directory (`<lab dir>/vfs-mnt/<vfs>/<volume>`), named with that
//! `mount:` in the agent's configuration. With [`PairOptions::agent_volumes`] the active site's
//! agent creates and mounts them itself, under its mount root.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use vfsdr_lab::{MIB, pair::{Pair, PairOptions}};
//! let pair = Pair::start(PairOptions::new("my-test", "fs1", &[("data", 512 * MIB)]))?;
//! std::fs::write(pair.mount("data").join("f"), b"hi")?;
//! let report = pair.replicate_now()?;
//! pair.check_snapshot(&report)?;
//! let image = pair.snapshot_image(report["snapshot"].as_u64().unwrap(), "data");
//! pair.with_image_mounted(&image, |dir| Ok(assert!(dir.join("f").exists())))?;
//! # Ok(()) }
//! ```
mod images;
mod options;

use std::{
    path::{Path, PathBuf},
    process::Child,
    time::Duration,
};

use anyhow::{Context as _, ensure};
use serde_json::Value;

pub use self::{
    images::{number, with_image_mounted},
    options::PairOptions,
};
use crate::{
    Lab, MIB, Site, SiteOptions, Volume,
    agent::{Agent, MountRoot, make_certs, mount_root, write_config_with_peers},
    check::wait_for,
};

/// One of the two sites of a [`Pair`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// `site-a`, where the VFS is active.
    Active,
    /// `site-b`, the DR site.
    Dr,
}

/// Two sites replicating one VFS. Fields drop in order: agents, volumes, mount roots, sites, lab.
pub struct Pair {
    /// The active site's agent.
    pub agent_a: Agent,
    /// The DR site's agent.
    pub agent_b: Agent,
    /// The VFS's volumes at the active site, in the order of [`PairOptions::volumes`] (none with
    /// [`PairOptions::agent_volumes`]: the agent made them).
    pub volumes: Vec<Volume>,
    /// The sites' mount roots (active, DR), with [`PairOptions::agent_volumes`].
    mount_roots: Option<(MountRoot, MountRoot)>,
    /// The active site, `site-a`.
    pub a: Site,
    /// The DR site, `site-b`.
    pub b: Site,
    /// The lab both sites are in.
    pub lab: Lab,
    /// What was built.
    pub options: PairOptions,
    /// The active site's configuration file (rewrite it and send SIGHUP to change the VFS).
    pub a_config: PathBuf,
    /// The DR site's configuration file.
    pub b_config: PathBuf,
}

impl Pair {
    /// Builds the lab, the volumes, the certificates and configurations, starts both agents
    /// (with [`PairOptions::agent_volumes`], checks the active one made the volumes ready) and
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
        let mounts = lab.dir().join("vfs-mnt").join(vfs);
        let (volumes, mount_roots) = match options.agent_volumes {
            true => (Vec::new(), Some((mount_root(&a)?, mount_root(&b)?))),
            false => (create_volumes(&options, &a, &mounts)?, None),
        };
        let (a_root, b_root) = match &mount_roots {
            Some((a_root, b_root)) => (Some(a_root.path()), Some(b_root.path())),
            None => (None, None),
        };
        let a_body = options.active_body(&a, a_root, &mounts);
        let a_config = write_config_with_peers(&a, &certs, &[&b], &a_body)?;
        let b_config = write_config_with_peers(&b, &certs, &[&a], &options.dr_body(&b, b_root))?;
        let agent_b = Agent::start(&b, &b_config)?;
        let agent_a = Agent::start(&a, &a_config)?;
        if options.agent_volumes {
            let status = agent_a.status()?;
            let states = status["vfs_volumes"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            ensure!(
                states.len() == options.volumes.len() && states.iter().all(|v| v["ready"] == true),
                "the active site's agent did not make the volumes ready: {status}\n{}",
                agent_a.log_text()
            );
        }
        wait_for(
            &format!("the definition of {vfs} at site-b"),
            Duration::from_secs(30),
            || Ok(agent_b.cli(["vfs"])?.contains(vfs.as_str())),
        )?;
        Ok(Pair {
            agent_a,
            agent_b,
            volumes,
            mount_roots,
            a,
            b,
            lab,
            options,
            a_config,
            b_config,
        })
    }

    /// The VFS's name.
    pub fn vfs(&self) -> &str {
        &self.options.vfs
    }

    /// Where `volume` of the VFS is mounted at the active site.
    pub fn mount(&self, volume: &str) -> PathBuf {
        match &self.mount_roots {
            Some((a_root, _)) => a_root.path().join(self.vfs()).join(volume),
            None => self.lab.dir().join("vfs-mnt").join(self.vfs()).join(volume),
        }
    }

    /// Where the DR site mounts its reserved copy of `volume` (with
    /// [`PairOptions::agent_volumes`] only: the DR site's mount root).
    pub fn dr_mount(&self, volume: &str) -> anyhow::Result<PathBuf> {
        let (_, b_root) = self
            .mount_roots
            .as_ref()
            .context("the DR site has a mount root with agent_volumes only")?;
        Ok(b_root.path().join(self.vfs()).join(volume))
    }

    /// SIGKILL to the agent of `side` (no chance to clean up); it stays down (its CLI calls
    /// fail) until [`Pair::start_agent`].
    pub fn kill_agent(&mut self, side: Side) -> anyhow::Result<()> {
        self.agent_mut(side).end(true)?;
        Ok(())
    }

    /// Stops the agent of `side` with SIGTERM; it stays down until [`Pair::start_agent`].
    pub fn stop_agent(&mut self, side: Side) -> anyhow::Result<()> {
        self.agent_mut(side).end(false)?;
        Ok(())
    }

    /// Starts the agent of `side` again, on its configuration, after [`Pair::kill_agent`] or
    /// [`Pair::stop_agent`].
    pub fn start_agent(&mut self, side: Side) -> anyhow::Result<()> {
        match side {
            Side::Active => self.agent_a = Agent::start(&self.a, &self.a_config)?,
            Side::Dr => self.agent_b = Agent::start(&self.b, &self.b_config)?,
        }
        Ok(())
    }

    fn agent_mut(&mut self, side: Side) -> &mut Agent {
        match side {
            Side::Active => &mut self.agent_a,
            Side::Dr => &mut self.agent_b,
        }
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

    /// `vfsdr replicate VFS --now --json` at the active site, running in the background.
    pub fn replicate_in_background(&self) -> anyhow::Result<Child> {
        self.agent_a
            .spawn_cli(&["replicate", self.vfs(), "--now", "--json"])
    }

    /// Waits (up to a minute) until the running cycle of the VFS at the active site shipped at
    /// least `bytes`; returns its progress (`vfs`, `full`, `done_bytes`, ...).
    pub fn wait_shipped(&self, bytes: u64) -> anyhow::Result<Value> {
        let mut seen = Value::Null;
        wait_for(
            "the cycle to be well under way",
            Duration::from_secs(60),
            || {
                let status = self.agent_a.status()?;
                if let Some(p) = status["progress"]
                    .as_array()
                    .and_then(|a| a.iter().find(|p| p["vfs"] == self.vfs()))
                {
                    seen = p.clone();
                    return Ok(p["done_bytes"].as_u64().unwrap_or(0) >= bytes);
                }
                Ok(false)
            },
        )?;
        Ok(seen)
    }

    /// `vfsdr verify VFS --json` at the active site: its exit code and report.
    pub fn verify(&self) -> anyhow::Result<(i32, Value)> {
        let (code, out, err) = self.agent_a.cli_status(&["verify", self.vfs(), "--json"])?;
        let report = serde_json::from_str(&out)
            .with_context(|| format!("verify exited {code}: {out}{err}"))?;
        Ok((code, report))
    }

    /// The active site's `vfsdr status --json`.
    pub fn status_a(&self) -> anyhow::Result<Value> {
        self.agent_a.status()
    }

    /// Replaces `from` by `to` in the active site's configuration, sends its agent SIGHUP, and
    /// waits until the DR site has received the new definition of the VFS.
    pub fn reconfigure_active(&self, from: &str, to: &str) -> anyhow::Result<()> {
        let config = std::fs::read_to_string(&self.a_config)?;
        let changed = config.replace(from, to);
        ensure!(
            changed != config,
            "no {from:?} in the active site's configuration"
        );
        let received = || {
            self.agent_b
                .log_text()
                .matches("definition_received")
                .count()
        };
        let before = received();
        std::fs::write(&self.a_config, changed)?;
        // SAFETY: signals the agent this pair started, by its pid.
        unsafe { libc::kill(self.agent_a.pid() as i32, libc::SIGHUP) };
        wait_for(
            "the new definition at the DR site",
            Duration::from_secs(30),
            || Ok(received() > before),
        )
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
}

/// Creates and mounts the volumes of `options` at the active site `a`: images in its pool,
/// mounted at `mounts/<volume>`.
fn create_volumes(options: &PairOptions, a: &Site, mounts: &Path) -> anyhow::Result<Vec<Volume>> {
    let vfs = &options.vfs;
    let images = a.pool().mount_point().join("volumes").join(vfs);
    std::fs::create_dir_all(&images)?;
    std::fs::create_dir_all(mounts)?;
    let mut volumes = Vec::new();
    for (name, size) in &options.volumes {
        ensure!(
            size % MIB == 0,
            "volume {name}: size {size} is not a whole MiB"
        );
        let image = images.join(format!("{name}.img"));
        volumes.push(
            Volume::create(&image, &mounts.join(name), *size)
                .with_context(|| format!("cannot create volume {vfs}/{name}"))?,
        );
    }
    Ok(volumes)
}
