//! The agent's VFS actions: definitions (recorded locally, pushed to and received from peers),
//! and the precheck, reservation and release of DR resources, run at the DR site whether the
//! operator asks there or at the active site (which forwards to its DR site).
use super::agent::{Agent, AgentError, Handled};
use crate::{
    api::{Request, Response, VfsInfo},
    config::VfsDef,
    peer::Message,
    resources::{self, Outcome, Purpose, Report, Step, precheck::Site},
    state::{ResourceKind, Role},
};

impl Agent {
    fn site_name(&self) -> &str {
        &self.config.site.name
    }

    fn local_definition(&self, vfs: &str) -> Option<&VfsDef> {
        self.config.vfs.iter().find(|d| d.name == vfs)
    }

    /// Records the VFSs of the configuration as active here (epoch 1 unless one is stored).
    pub(super) fn record_local_definitions(&mut self) -> Result<(), AgentError> {
        for def in self.config.vfs.clone() {
            let epoch = self.store.definition(&def.name)?.map_or(1, |s| s.epoch);
            let change =
                self.store
                    .put_definition(&def, Role::Active, epoch, &self.config.site.name)?;
            tracing::info!(site = %self.config.site.name, vfs = %def.name, event = "definition_recorded",
                epoch, change = ?change, "VFS defined here, active");
        }
        Ok(())
    }

    /// What to push to peers: each local VFS's definition to its DR site.
    pub fn pushes(&self) -> Result<Vec<(String, Message)>, AgentError> {
        let mut out = Vec::new();
        for def in &self.config.vfs {
            let epoch = self.store.definition(&def.name)?.map_or(1, |s| s.epoch);
            out.push((
                def.replication.peer.clone(),
                Message::PushDefinition {
                    vfs: def.clone(),
                    epoch,
                },
            ));
        }
        Ok(out)
    }

    /// After a restart: recreate reserved links and mounts that are gone; report the rest.
    pub(super) fn reconcile_reservations(&mut self) -> Result<(), AgentError> {
        let steps = resources::reconcile(&self.store, self.links.as_mut(), self.mounts.as_mut())?;
        for (vfs, s) in steps {
            if s.action == "present" {
                continue;
            }
            let site = self.config.site.name.clone();
            if s.action == "recreated" {
                tracing::warn!(site = %site, vfs = %vfs, event = "reservation_recreated",
                    resource = %s.resource, detail = %s.detail, "reserved resource was missing, recreated");
            } else {
                tracing::error!(site = %site, vfs = %vfs, event = "reservation_changed",
                    resource = %s.resource, action = %s.action, detail = %s.detail,
                    "reserved resource changed by someone else; left as found");
            }
        }
        Ok(())
    }

    pub(super) fn handle_vfs(&mut self, request: Request) -> Handled {
        let (vfs, message) = match request {
            Request::ListVfs => return Handled::Now(self.list_vfs()),
            Request::Precheck {
                vfs,
                purpose,
                change,
            } => {
                let m = Message::Precheck {
                    vfs: vfs.clone(),
                    purpose,
                    change,
                };
                (vfs, m)
            }
            Request::Reserve {
                vfs,
                change,
                proceed,
            } => {
                let m = Message::Reserve {
                    vfs: vfs.clone(),
                    change,
                    proceed,
                };
                (vfs, m)
            }
            Request::Release { vfs } => (vfs.clone(), Message::Release { vfs }),
            Request::Snapshots { vfs } => return Handled::Now(self.snapshots(&vfs)),
            Request::DeleteSnapshots { vfs, ids, force } => {
                return self.delete_snapshots(&vfs, &ids, force);
            }
            Request::Replicate { vfs } => {
                return match self.local_definition(&vfs) {
                    Some(def) => Handled::Cycle(def.clone()),
                    None => Handled::Now(Response::Error {
                        message: format!(
                            "VFS {vfs} is not active at site {}; replication runs at its active site",
                            self.site_name()
                        ),
                    }),
                };
            }
            other => {
                return Handled::Now(Response::Error {
                    message: format!("not a VFS request: {other:?}"),
                });
            }
        };
        // Active here: the DR site answers.
        if let Some(def) = self.local_definition(&vfs) {
            return Handled::Forward {
                peer: def.replication.peer.clone(),
                message,
            };
        }
        let site = self.site_name().to_owned();
        Handled::Now(answer_to_response(self.run_here(&site, message)))
    }

    /// A request from peer `from`.
    pub fn handle_peer(&mut self, from: &str, message: Message) -> Message {
        match message {
            Message::PushDefinition { vfs, epoch } => self.receive_definition(from, vfs, epoch),
            m @ (Message::Precheck { .. } | Message::Reserve { .. } | Message::Release { .. }) => {
                self.run_here(from, m)
            }
            other => Message::Error {
                message: format!(
                    "site {} does not take {} requests",
                    self.site_name(),
                    other.kind()
                ),
            },
        }
    }

    fn receive_definition(&mut self, from: &str, def: VfsDef, epoch: u64) -> Message {
        let site = self.site_name().to_owned();
        let refuse = |message: String| {
            tracing::warn!(site = %site, vfs = %def.name, peer = from, event = "definition_refused",
                reason = %message, "definition from a peer refused");
            Message::Error { message }
        };
        if let Err(problems) = def.validate() {
            return refuse(format!(
                "definition of VFS {} from site {from} refused: {}",
                def.name,
                problems.join("; ")
            ));
        }
        if def.replication.peer != site {
            return refuse(format!(
                "VFS {} from site {from} names {} as its DR site, not {site}",
                def.name, def.replication.peer
            ));
        }
        if self.local_definition(&def.name).is_some() {
            return refuse(format!(
                "VFS {} is active at site {site}; it cannot be a standby here",
                def.name
            ));
        }
        match self.store.put_definition(&def, Role::Standby, epoch, from) {
            Ok(change) => {
                tracing::info!(site = %site, vfs = %def.name, peer = from, event = "definition_received",
                    epoch, change = ?change, "VFS definition received, standby here");
                Message::Ack
            }
            Err(e) => refuse(e.to_string()),
        }
    }

    /// Runs a precheck, reserve or release at this site, for the operator here (`from` is this
    /// site) or for the active site `from`, which must be where the definition came from.
    fn run_here(&mut self, from: &str, message: Message) -> Message {
        let result = match message {
            Message::Precheck {
                vfs,
                purpose,
                change,
            } => self
                .definition_for(from, &vfs, change)
                .and_then(|def| self.precheck(&def, purpose))
                .map(|report| Message::PrecheckReport { report }),
            Message::Reserve {
                vfs,
                change,
                proceed,
            } => {
                let purpose = if change.is_some() {
                    Purpose::Change
                } else {
                    Purpose::Failover
                };
                self.definition_for(from, &vfs, change)
                    .and_then(|def| self.reserve(&def, purpose, proceed))
                    .map(|outcome| Message::Reserved { outcome })
            }
            Message::Release { vfs } => self
                .release(from, &vfs)
                .map(|steps| Message::Released { vfs, steps }),
            other => Err(format!("not a resource request: {}", other.kind())),
        };
        result.unwrap_or_else(|message| Message::Error { message })
    }

    /// The definition to check: the proposed one for a change, else the stored one.
    fn definition_for(
        &self,
        from: &str,
        vfs: &str,
        change: Option<VfsDef>,
    ) -> Result<VfsDef, String> {
        let site = self.site_name();
        let stored = self.store.definition(vfs).map_err(|e| e.to_string())?;
        let Some(stored) = stored else {
            return Err(format!(
                "unknown VFS {vfs}: site {site} has no definition of it (the active site sends it over the peer link)"
            ));
        };
        if from != site && stored.from_site != from {
            return Err(format!(
                "site {from} does not own VFS {vfs} (its definition came from {})",
                stored.from_site
            ));
        }
        match change {
            Some(def) if def.name != vfs => Err(format!(
                "the proposed definition is of VFS {}, not {vfs}",
                def.name
            )),
            Some(def) => def
                .validate()
                .map(|()| def)
                .map_err(|p| format!("proposed definition of {vfs} is invalid: {}", p.join("; "))),
            None => Ok(stored.def),
        }
    }

    fn precheck(&mut self, def: &VfsDef, purpose: Purpose) -> Result<Report, String> {
        let store = &self.store;
        let holder = |k: ResourceKind, r: &str| store.holder(k, r).ok().flatten();
        let latest = |vfs: &str, volume: &str| {
            let snap = store.latest_snapshot(vfs).ok().flatten()?;
            snap.images
                .into_iter()
                .find(|i| i.volume == volume)
                .map(|i| i.path)
        };
        let site = Site {
            name: &self.config.site.name,
            resources: &self.config.resources,
            holder: &holder,
            latest_image: &latest,
        };
        let report = resources::precheck(
            &site,
            def,
            purpose,
            self.links.as_mut(),
            self.mounts.as_mut(),
        )
        .map_err(|e| e.to_string())?;
        tracing::info!(site = %self.config.site.name, vfs = %def.name, event = "precheck",
            purpose = ?purpose, sufficient = report.sufficient,
            discrepancies = report.discrepancies.len(), "precheck done");
        Ok(report)
    }

    fn reserve(
        &mut self,
        def: &VfsDef,
        purpose: Purpose,
        proceed: bool,
    ) -> Result<Outcome, String> {
        let report = self.precheck(def, purpose)?;
        let site = self.config.site.name.clone();
        let outcome = resources::reserve(report, proceed, &mut self.store, self.links.as_mut(), self.mounts.as_mut())
            .map_err(|e| {
                tracing::error!(site = %site, vfs = %def.name, event = "reserve_failed", error = %e, "reservation failed, nothing kept");
                e.to_string()
            })?;
        for s in &outcome.steps {
            tracing::info!(site = %site, vfs = %def.name, event = "reserved", resource = %s.resource,
                action = %s.action, detail = %s.detail, "reservation step");
        }
        tracing::info!(site = %site, vfs = %def.name, event = "reserve", reserved = outcome.reserved,
            shortages = outcome.report.discrepancies.len(), "reservation done");
        Ok(outcome)
    }

    fn release(&mut self, from: &str, vfs: &str) -> Result<Vec<Step>, String> {
        self.definition_for(from, vfs, None)?;
        let site = self.config.site.name.clone();
        let steps = resources::release(
            vfs,
            &mut self.store,
            self.links.as_mut(),
            self.mounts.as_mut(),
        )
        .map_err(|e| e.to_string())?;
        for s in &steps {
            tracing::info!(site = %site, vfs = %vfs, event = "released", resource = %s.resource,
                action = %s.action, "release step");
        }
        Ok(steps)
    }

    fn snapshots(&self, vfs: &str) -> Response {
        if let Some(def) = self.local_definition(vfs) {
            return Response::Error {
                message: format!(
                    "VFS {vfs} is active here; its snapshots are kept at its DR site {}",
                    def.replication.peer
                ),
            };
        }
        match self
            .store
            .definition(vfs)
            .and_then(|d| Ok((d, self.store.snapshots(vfs)?)))
        {
            Ok((None, _)) => Response::Error {
                message: format!("unknown VFS {vfs} at site {}", self.site_name()),
            },
            Ok((Some(stored), snapshots)) => Response::Snapshots {
                vfs: vfs.to_owned(),
                // Those being removed (a prune runs after each commit) are gone already.
                snapshots: snapshots
                    .into_iter()
                    .filter(|s| s.state == crate::state::SnapshotState::Committed)
                    .collect(),
                filesystems: stored
                    .def
                    .volumes
                    .iter()
                    .map(|v| (v.name.clone(), v.filesystem.kernel_name().to_owned()))
                    .collect(),
            },
            Err(e) => Response::Error {
                message: e.to_string(),
            },
        }
    }

    /// After a snapshot of `vfs` was committed here: its reserved mount points take it.
    pub fn refresh_reserved_mounts(&mut self, vfs: &str) {
        let site = self.config.site.name.clone();
        let latest = match self.store.latest_snapshot(vfs) {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(site = %site, vfs = %vfs, event = "reservation_refresh_failed", error = %e, "cannot read the catalog");
                return;
            }
        };
        match resources::refresh(vfs, &latest, &mut self.store, self.mounts.as_mut()) {
            Ok(steps) => {
                for s in steps.iter().filter(|s| s.action != "present") {
                    tracing::info!(site = %site, vfs = %vfs, event = "reservation_refreshed",
                        resource = %s.resource, action = %s.action, detail = %s.detail,
                        "reserved mount point follows the latest snapshot");
                }
            }
            Err(e) => {
                tracing::error!(site = %site, vfs = %vfs, event = "reservation_refresh_failed",
                error = %e, "reserved mount points keep the older snapshot")
            }
        }
    }

    fn list_vfs(&mut self) -> Response {
        let volumes = self.vfs_volume_states();
        let list = (|| {
            let mut out = Vec::new();
            for s in self.store.definitions()? {
                out.push(VfsInfo {
                    volumes: volumes
                        .iter()
                        .filter(|v| v.vfs == s.def.name)
                        .cloned()
                        .collect(),
                    reservations: self.store.reservations(&s.def.name)?,
                    shortages: self.store.shortages(&s.def.name)?,
                    name: s.def.name.clone(),
                    role: s.role,
                    epoch: s.epoch,
                    from_site: s.from_site,
                });
            }
            Ok::<_, crate::state::StateError>(out)
        })();
        match list {
            Ok(vfs) => Response::Vfs { vfs },
            Err(e) => Response::Error {
                message: e.to_string(),
            },
        }
    }
}

/// Maps a peer answer (or a local one in peer form) to the local API's response.
pub fn answer_to_response(m: Message) -> Response {
    match m {
        Message::PrecheckReport { report } => Response::Precheck(report),
        Message::Reserved { outcome } => Response::Reserved(outcome),
        Message::Released { vfs, steps } => Response::Released { vfs, steps },
        Message::Error { message } => Response::Error { message },
        other => Response::Error {
            message: format!("unexpected answer from the peer: {}", other.kind()),
        },
    }
}
