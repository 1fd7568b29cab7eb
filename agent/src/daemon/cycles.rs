//! The active site's replication scheduler: when each VFS is due (interval, first delay after
//! start, data-at-risk trigger), the cycles running on their threads, and what each left.
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot};

use super::{Agent, CycleReport, PeerLink, replicate, report, status};
use crate::{
    api::{self, Response},
    replication::session::SessionError,
};

/// How long after start the first scheduled cycle of a VFS runs, at most.
pub(super) const FIRST_CYCLE_DELAY: Duration = Duration::from_secs(60);

/// How long after start the first scheduled cycle of `def` runs: its interval, at most
/// [`FIRST_CYCLE_DELAY`].
pub(super) fn first_delay(def: &crate::config::VfsDef) -> Duration {
    Duration::from_secs(def.replication.interval_s).min(FIRST_CYCLE_DELAY)
}

/// A finished cycle, back from its thread.
pub(super) struct CycleDone {
    pub(super) vfs: String,
    pub(super) result: Result<replicate::CycleOutcome, replicate::CycleFailure>,
    pub(super) reply: Option<oneshot::Sender<Response>>,
}

/// The active site's cycles: which run, when each VFS is due, the last outcome of each.
#[derive(Default)]
pub(super) struct Cycles {
    pub(super) running: std::collections::HashSet<String>,
    pub(super) next_due: HashMap<String, Instant>,
    pub(super) last: std::collections::BTreeMap<String, CycleReport>,
    /// VFSs whose DR pool is full (see `pause.rs`).
    pub(super) paused: std::collections::BTreeMap<String, api::Paused>,
    /// How far each running cycle got.
    pub(super) progress:
        std::collections::BTreeMap<String, Arc<crate::replication::progress::Progress>>,
    /// The latest cycle started of each VFS since the agent started (see `status.rs`).
    pub(super) starts: HashMap<String, status::LastStart>,
}

impl Cycles {
    /// The local VFSs whose interval has passed, or whose data at risk passed their trigger.
    pub(super) fn due(&mut self, agent: &Agent) -> Vec<crate::config::VfsDef> {
        let now = Instant::now();
        let mut out = Vec::new();
        for def in &agent.config().vfs {
            // The first cycle after start waits a little for the peer link and the DR site's
            // copy of the definition (`vfsdr replicate --now` does not wait).
            let due = *self
                .next_due
                .entry(def.name.clone())
                .or_insert(now + first_delay(def));
            if self.running.contains(&def.name) {
                continue;
            }
            let at_risk = agent.at_risk_bytes(&def.name);
            let triggered = def
                .replication
                .trigger_at_risk_bytes
                .is_some_and(|t| at_risk >= t);
            if triggered && due > now {
                tracing::info!(vfs = %def.name, event = "cycle_triggered", at_risk_bytes = at_risk,
                    "data at risk passed the trigger: cycle starts early");
            }
            if due <= now || triggered {
                out.push(def.clone());
            }
        }
        out
    }

    pub(super) fn start(
        &mut self,
        agent: &mut Agent,
        link: Option<&PeerLink>,
        def: crate::config::VfsDef,
        reply: Option<oneshot::Sender<Response>>,
        done: &mpsc::UnboundedSender<CycleDone>,
    ) {
        let refusal = if self.running.contains(&def.name) {
            Some(format!("a cycle of {} is already running", def.name))
        } else if link.is_none() {
            Some(format!(
                "VFS {}: this site has no peer link (site.tls, peers)",
                def.name
            ))
        } else if agent.config().resources.pool.is_none() {
            Some(format!(
                "VFS {}: this site has no pool (resources.pool)",
                def.name
            ))
        } else {
            None
        };
        let (Some(link), Some(pool), None) = (
            link,
            agent
                .config()
                .resources
                .pool
                .as_ref()
                .map(|p| p.path.clone()),
            refusal.clone(),
        ) else {
            if let Some(r) = reply {
                let _ = r.send(Response::Error {
                    message: refusal.unwrap_or_default(),
                });
            }
            return;
        };
        // The mark is taken before the cycle's pre-flush: what is written from here on is at
        // risk until the next cycle (what is written until the freeze is also in this one).
        let at_risk = agent.take_vfs_marks(&def.name);
        agent.stage_gap_windows(&def.name);
        tracing::debug!(vfs = %def.name, event = "cycle_starting", at_risk_bytes = at_risk, "cycle starting");
        let interval = Duration::from_secs(def.replication.interval_s);
        self.next_due
            .insert(def.name.clone(), Instant::now() + interval);
        self.running.insert(def.name.clone());
        let def_name = def.name.clone();
        self.starts.insert(
            def.name.clone(),
            status::LastStart {
                unix_ms: report::unix_ms_now(),
                running: true,
            },
        );
        let job = replicate::CycleJob {
            def,
            pool,
            mount_root: agent.config().resources.mount_root.clone(),
            state_dir: agent.config().state_dir.clone(),
            ctx: link.ctx.clone(),
            progress: Arc::new(crate::replication::progress::Progress::new(&def_name)),
        };
        let vfs = job.def.name.clone();
        self.progress.insert(vfs.clone(), job.progress.clone());
        let done = done.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("cycle-{vfs}"))
            .spawn({
                let vfs = vfs.clone();
                move || {
                    let result = replicate::run_cycle(job);
                    let _ = done.send(CycleDone { vfs, result, reply });
                }
            });
        if let Err(e) = spawned {
            self.running.remove(&vfs);
            self.ended(&vfs);
            agent.abort_gap_windows(&vfs);
            self.progress.remove(&vfs);
            tracing::error!(vfs = %vfs, event = "cycle_failed", error = %e, "cannot start the cycle thread");
        }
    }

    /// The cycle of `vfs` is no longer running.
    pub(super) fn ended(&mut self, vfs: &str) {
        if let Some(s) = self.starts.get_mut(vfs) {
            s.running = false;
        }
    }

    pub(super) fn finish(&mut self, agent: &mut Agent, site: &str, done: CycleDone) {
        self.running.remove(&done.vfs);
        self.progress.remove(&done.vfs);
        self.ended(&done.vfs);
        let response = match done.result {
            Ok(mut outcome) => {
                agent.check_tracker_gaps(&mut outcome);
                let r = outcome.report;
                self.resumed(&mut agent.store, site, &r.vfs, r.cycle);
                let next = agent
                    .config()
                    .vfs
                    .iter()
                    .find(|d| d.name == r.vfs)
                    .and_then(|def| {
                        let schedule = self.schedule(agent, def, true);
                        status::next_cycle(&schedule, Instant::now(), report::unix_ms_now()).in_ms
                    });
                let gaps = r.tracker_check.iter().filter(|c| c.is_gap()).count();
                report::log_cycle_done(site, &r, gaps, next);
                self.last.insert(r.vfs.clone(), r.clone());
                Response::Replicated(r)
            }
            Err(failure) => {
                agent.abort_gap_windows(&done.vfs);
                let message = failure.to_string();
                if let replicate::CycleFailure::Session(SessionError::PoolFull { full, .. }) =
                    &failure
                {
                    let peer = agent
                        .config()
                        .vfs
                        .iter()
                        .find(|d| d.name == done.vfs)
                        .map_or("?".to_owned(), |d| d.replication.peer.clone());
                    self.pool_full(&mut agent.store, site, &done.vfs, &peer, full);
                } else {
                    if let replicate::CycleFailure::Session(SessionError::BaseMissing { .. }) =
                        &failure
                    {
                        // The full copy that replaces the lost base starts at once.
                        self.next_due.insert(done.vfs.clone(), Instant::now());
                    }
                    tracing::error!(site = %site, vfs = %done.vfs, event = "cycle_failed", error = %message,
                        "replication cycle failed; the DR site keeps its last snapshot");
                }
                Response::Error { message }
            }
        };
        if let Some(r) = done.reply {
            let _ = r.send(response);
        }
    }
}
