//! The agent's state and the actions on it, without I/O of its own: every kernel access goes
//! through the `Probes` and `BlockDevices` seams, so this is unit-tested with fakes.
use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use crate::{
    api::{Request, Response, StatusReport, VolumeInfo},
    config::{self, Config, VolumeSource},
    resources::{Links, Mounts},
    state::Store,
    tracking::{Probes, TrackError, Tracker},
    volumes::{BlockDevices, Device, VolumeError},
};

struct Opened {
    name: String,
    source: VolumeSource,
    device: Device,
}

/// The kernel seams the agent acts through.
pub struct Kernel {
    pub probes: Box<dyn Probes>,
    pub devices: Box<dyn BlockDevices>,
    pub links: Box<dyn Links>,
    pub mounts: Box<dyn Mounts>,
}

pub struct Agent {
    pub(super) config: Config,
    config_path: PathBuf,
    pub(super) tracker: Tracker,
    probes: Box<dyn Probes>,
    pub(super) devices: Box<dyn BlockDevices>,
    pub(super) links: Box<dyn Links>,
    pub(super) mounts: Box<dyn Mounts>,
    pub(super) store: Store,
    opened: Vec<Opened>,
    /// Why bringing a VFS volume up failed, by `vfs/volume`, until it succeeds.
    pub(super) volume_errors: std::collections::BTreeMap<String, String>,
    started: Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Track(#[from] TrackError),
    #[error("tracking.writers: {0}")]
    Writers(#[from] crate::tracking::ProbeError),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Resource(#[from] crate::resources::ResourceError),
    #[error("volumes {first} and {second} are the same device {device}; a device is watched once")]
    SameDevice {
        first: String,
        second: String,
        device: String,
    },
}

/// How a local API request is answered.
#[derive(Debug)]
pub enum Handled {
    Now(Response),
    /// The VFS is active here; its DR site `peer` answers `message`.
    Forward {
        peer: String,
        message: crate::peer::Message,
    },
    /// Run a replication cycle of this VFS, active here.
    Cycle(crate::config::VfsDef),
    /// Delete snapshots of a VFS standby here (checked; the files are removed off the loop).
    Delete(super::snapshot_delete::Deletion),
}

/// What a reload changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub kept: Vec<String>,
}

fn source_path(s: &VolumeSource) -> &Path {
    match s {
        VolumeSource::Device(p) | VolumeSource::Image(p) => p,
    }
}

impl Agent {
    /// Opens every configured volume and starts watching it. Any volume that cannot be opened
    /// stops the start: the agent refuses to run with part of its configuration.
    /// First brings up the volumes of the VFSs defined here (a VFS volume that cannot be
    /// brought up is reported, and the agent runs).
    /// Also records the VFSs defined here as active in the store, and brings the kernel in
    /// line with the reservations the store holds.
    pub fn start(
        config_path: &Path,
        config: Config,
        kernel: Kernel,
        store: Store,
    ) -> Result<Agent, AgentError> {
        let mut agent = Agent {
            config: config.clone(),
            config_path: config_path.to_owned(),
            tracker: Tracker::new(),
            probes: kernel.probes,
            devices: kernel.devices,
            links: kernel.links,
            mounts: kernel.mounts,
            store,
            opened: Vec::new(),
            volume_errors: Default::default(),
            started: Instant::now(),
        };
        agent.probes.set_writers(config.tracking.writers)?;
        agent.record_local_definitions()?;
        // Before tracking: a volume created here is tracked from its first write.
        agent.take_down_removed_volumes();
        agent.bring_up_volumes(&config);
        let volumes = agent.tracked_volumes(&config);
        let opened = agent.open_all(&volumes, &[])?;
        agent.watch_all(opened)?;
        agent.reconcile_reservations()?;
        Ok(agent)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The volumes to track: those configured, and the volumes of the VFSs active here whose
    /// images exist (tracked as `<vfs>/<volume>`: their changes since the last cycle are the
    /// data at risk).
    fn tracked_volumes(&mut self, config: &Config) -> Vec<config::Volume> {
        let mut out = config.volumes.clone();
        let Some(pool) = config.resources.pool.as_ref() else {
            return out;
        };
        for def in &config.vfs {
            for v in &def.volumes {
                let image = super::volume_image(&pool.path, &def.name, &v.name);
                if self.devices.image_exists(&image) {
                    out.push(config::Volume {
                        name: format!("{}/{}", def.name, v.name),
                        source: VolumeSource::Image(image),
                    });
                }
            }
        }
        out
    }

    /// Bytes written to the volumes of `vfs` since their mark (the data at risk).
    pub fn at_risk_bytes(&self, vfs: &str) -> u64 {
        let prefix = format!("{vfs}/");
        self.tracker
            .volume_names()
            .filter(|n| n.starts_with(&prefix))
            .filter_map(|n| self.tracker.changed_blocks(n).ok())
            .map(|blocks| blocks * vfsdr_common::BLOCK_SIZE)
            .sum()
    }

    /// Starts a new mark on every tracked volume of `vfs` (at the start of a cycle, before its
    /// pre-flush); returns the bytes changed since the previous mark.
    pub fn take_vfs_marks(&mut self, vfs: &str) -> u64 {
        let _ = self.poll();
        let prefix = format!("{vfs}/");
        let names: Vec<String> = self
            .tracker
            .volume_names()
            .filter(|n| n.starts_with(&prefix))
            .map(str::to_owned)
            .collect();
        names
            .iter()
            .filter_map(|n| self.tracker.take_mark(n).ok())
            .map(|c| c.blocks * c.block_size)
            .sum()
    }

    /// Opens the given volumes (nothing is watched yet); on error, everything opened here is
    /// dropped again. Volumes named in `leaving` are about to be released and may share a device.
    fn open_all(
        &mut self,
        volumes: &[config::Volume],
        leaving: &[String],
    ) -> Result<Vec<Opened>, AgentError> {
        let mut opened: Vec<Opened> = Vec::new();
        for v in volumes {
            let device = self.devices.open(&v.name, &v.source)?;
            let clash = opened
                .iter()
                .chain(self.opened.iter().filter(|o| !leaving.contains(&o.name)))
                .find(|o| o.device.dev == device.dev);
            if let Some(o) = clash {
                return Err(AgentError::SameDevice {
                    first: o.name.clone(),
                    second: v.name.clone(),
                    device: device.dev.to_string(),
                });
            }
            opened.push(Opened {
                name: v.name.clone(),
                source: v.source.clone(),
                device,
            });
        }
        Ok(opened)
    }

    fn watch_all(&mut self, opened: Vec<Opened>) -> Result<(), AgentError> {
        let mut done = Vec::new();
        for o in &opened {
            if let Err(e) = self
                .tracker
                .watch(self.probes.as_mut(), &o.name, o.device.dev)
            {
                for name in done {
                    let _ = self.tracker.unwatch(self.probes.as_mut(), name);
                }
                return Err(e.into());
            }
            done.push(o.name.as_str());
        }
        for o in opened {
            tracing::info!(
                site = %self.config.site.name,
                volume = %o.name,
                event = "volume_watched",
                device = %o.device.path.display(),
                source = %source_path(&o.source).display(),
                attached = o.device.attached,
                "watching volume"
            );
            self.opened.push(o);
        }
        Ok(())
    }

    /// Re-reads the configuration file and applies it. On any error the running configuration
    /// is kept unchanged and the error says why.
    pub fn reload(&mut self) -> Result<ReloadSummary, AgentError> {
        let new = config::load(&self.config_path)?;
        self.apply(new)
    }

    /// Applies a new configuration: volumes no longer listed (or whose source changed) are
    /// released, new ones are opened and watched. New volumes are all opened before anything is
    /// released, so a volume that cannot be opened leaves the running state untouched.
    pub fn apply(&mut self, new: Config) -> Result<ReloadSummary, AgentError> {
        // VFS volumes: those that left the configuration go down first (their mount path may
        // be another's now), then every configured one is brought up.
        let old = self.config.clone();
        self.probes.set_writers(new.tracking.writers)?;
        self.take_down_volumes(&old, &new);
        self.bring_up_volumes(&new);
        let wanted = self.tracked_volumes(&new);
        let stays = |o: &Opened| {
            wanted
                .iter()
                .any(|v| v.name == o.name && v.source == o.source)
        };
        let to_add: Vec<config::Volume> = wanted
            .iter()
            .filter(|v| {
                !self
                    .opened
                    .iter()
                    .any(|o| o.name == v.name && o.source == v.source)
            })
            .cloned()
            .collect();
        let leaving: Vec<String> = self
            .opened
            .iter()
            .filter(|o| !stays(o))
            .map(|o| o.name.clone())
            .collect();
        let opened = self.open_all(&to_add, &leaving)?;

        let (keep, release): (Vec<Opened>, Vec<Opened>) = std::mem::take(&mut self.opened)
            .into_iter()
            .partition(stays);
        self.opened = keep;
        for o in &release {
            self.tracker.unwatch(self.probes.as_mut(), &o.name)?;
        }
        let added: Vec<String> = opened.iter().map(|o| o.name.clone()).collect();
        self.watch_all(opened)?;
        let mut summary = ReloadSummary {
            added,
            ..Default::default()
        };
        for o in release {
            tracing::info!(site = %new.site.name, volume = %o.name, event = "volume_released", "stopped watching volume");
            summary.removed.push(o.name);
        }
        summary.kept = self
            .opened
            .iter()
            .map(|o| o.name.clone())
            .filter(|n| !summary.added.contains(n))
            .collect();
        self.config = new;
        self.record_local_definitions()?;
        Ok(summary)
    }

    /// Drains the kernel probes into the tracker.
    pub fn poll(&mut self) -> Result<(), TrackError> {
        self.tracker.poll(self.probes.as_mut(), Instant::now())
    }

    pub fn wakeup_fd(&self) -> Option<std::os::fd::RawFd> {
        self.probes.wakeup_fd()
    }

    /// Answers a local API request, or says which peer must answer it.
    pub fn handle(&mut self, request: Request) -> Handled {
        match request {
            Request::Status | Request::Changed { .. } => {
                Handled::Now(self.handle_tracking(request))
            }
            other => self.handle_vfs(other),
        }
    }

    fn handle_tracking(&mut self, request: Request) -> Response {
        // Every answer reflects what the kernel queued up to now.
        if let Err(e) = self.poll() {
            return Response::Error {
                message: e.to_string(),
            };
        }
        let result = match request {
            Request::Status => {
                let mut report = self.status();
                report.vfs_volumes = self.vfs_volume_states();
                Ok(Response::Status(report))
            }
            Request::Changed {
                volume,
                take: false,
            } => self.tracker.changed(&volume).map(Response::Changed),
            Request::Changed { volume, take: true } => {
                let r = self.tracker.take_mark(&volume);
                if let Ok(c) = &r {
                    tracing::info!(site = %self.config.site.name, volume = %volume, event = "mark_taken", blocks = c.blocks, "changed blocks taken, new mark");
                }
                r.map(Response::Changed)
            }
            other => Ok(Response::Error {
                message: format!("not a tracking request: {other:?}"),
            }),
        };
        result.unwrap_or_else(|e| Response::Error {
            message: e.to_string(),
        })
    }

    pub fn status(&self) -> StatusReport {
        StatusReport {
            site: self.config.site.name.clone(),
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs(),
            config: self.config_path.clone(),
            volumes: self
                .opened
                .iter()
                .map(|o| VolumeInfo {
                    name: o.name.clone(),
                    source: source_path(&o.source).to_owned(),
                    device: o.device.path.clone(),
                    size_bytes: o.device.size,
                    attached_by_agent: o.device.attached,
                })
                .collect(),
            // With the syscall probe off, what its map still holds is stale.
            tracking: crate::tracking::TrackingStatus {
                writers_on: self.config.tracking.writers,
                ..self.tracker.status(if self.config.tracking.writers {
                    self.config.tracking.top_writers
                } else {
                    0
                })
            },
            peers: Default::default(),
            replication: Vec::new(),
            replication_status: Vec::new(),
            paused: Vec::new(),
            vfs_volumes: Vec::new(),
            progress: Vec::new(),
        }
    }
}
