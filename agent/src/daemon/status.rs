//! The replication status of each VFS active here, for `vfsdr status`: what it is doing, the
//! DR site's latest consistent point and the RPO lag, the last cycle, when the next starts, the
//! data at risk.
//!
//! What the scheduler holds in memory (the running cycle, the last report, a pause, when each
//! VFS is due) is completed by what the store knows (the last acknowledged cycle and the time
//! of its point), so the status is whole before the first cycle and right after a restart.
//! The decisions are pure functions of those inputs and of the time, tested in `status_tests`.
use std::time::{Duration, Instant};

use super::{Agent, CycleReport, Cycles, report::unix_ms_now};
use crate::{
    api::{
        ConsistentPoint, NextCycle, NextCycleWhy, Paused, ReplicationState, VfsReplicationStatus,
    },
    config::VfsDef,
    state::SourceState,
};

/// The latest cycle the scheduler started for a VFS since the agent started.
#[derive(Clone, Copy, Debug)]
pub(super) struct LastStart {
    /// When it started (milliseconds since the Unix epoch).
    pub unix_ms: u64,
    /// It has not finished yet.
    pub running: bool,
}

/// What the scheduler knows of a VFS, for [`next_cycle`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Schedule {
    /// This site has a peer link (without one, nothing is scheduled).
    pub link: bool,
    /// When the VFS is due; `None` before the scheduler's first look at it.
    pub due: Option<Instant>,
    /// How long after the agent's start its first cycle comes.
    pub first_delay: Duration,
    /// A cycle was started since the agent started.
    pub started_once: bool,
    pub running: bool,
    pub paused: bool,
    /// The data at risk passed the configured trigger.
    pub triggered: bool,
}

/// When the scheduler starts the next cycle, seen at `now` (`now_unix_ms` on the wall clock).
pub(super) fn next_cycle(s: &Schedule, now: Instant, now_unix_ms: u64) -> NextCycle {
    let at = |why, wait: Duration| NextCycle {
        why,
        in_ms: Some(wait.as_millis() as u64),
        unix_ms: Some(now_unix_ms + wait.as_millis() as u64),
    };
    if !s.link {
        return NextCycle {
            why: NextCycleWhy::NoPeerLink,
            in_ms: None,
            unix_ms: None,
        };
    }
    // The scheduler sets the first due time at its first look, at most a tick after start.
    let due = s.due.unwrap_or(now + s.first_delay);
    let wait = due.saturating_duration_since(now);
    if s.running {
        return match wait.is_zero() {
            true => NextCycle {
                why: NextCycleWhy::AfterRunning,
                in_ms: None,
                unix_ms: None,
            },
            false => at(NextCycleWhy::Interval, wait),
        };
    }
    if s.triggered {
        return at(NextCycleWhy::AtRiskTrigger, Duration::ZERO);
    }
    let why = if s.paused {
        NextCycleWhy::RetryPaused
    } else if !s.started_once {
        NextCycleWhy::FirstAfterStart
    } else {
        NextCycleWhy::Interval
    };
    at(why, wait)
}

/// The RPO lag: how old the point taken at `point_unix_ms` is at `now_unix_ms` (0 if the
/// clock went back).
pub(super) fn rpo_lag_ms(now_unix_ms: u64, point_unix_ms: u64) -> u64 {
    now_unix_ms.saturating_sub(point_unix_ms)
}

/// What is known of one VFS, for [`vfs_status`].
pub(super) struct Known<'a> {
    pub def: &'a VfsDef,
    /// Its replication progress in the store.
    pub source: Option<&'a SourceState>,
    /// Its last cycle committed since the agent started.
    pub last: Option<&'a CycleReport>,
    pub running_since_unix_ms: Option<u64>,
    pub paused: Option<&'a Paused>,
    pub at_risk_bytes: u64,
    pub next: NextCycle,
}

/// The DR site's latest consistent point: from the last report when it is the latest (it has
/// the DR site's snapshot id), else from the store (a snapshot's id is its cycle's number).
fn last_point(k: &Known<'_>) -> Option<ConsistentPoint> {
    let stored = k.source.and_then(|s| {
        s.last_acked.map(|cycle| ConsistentPoint {
            cycle,
            snapshot: cycle,
            point_unix_ms: s.point_unix_ms,
        })
    });
    let reported = k.last.map(|r| ConsistentPoint {
        cycle: r.cycle,
        snapshot: r.snapshot,
        point_unix_ms: (r.point_unix_ms > 0).then_some(r.point_unix_ms),
    });
    match (stored, reported) {
        (Some(s), Some(r)) if s.cycle > r.cycle => Some(s),
        (s, r) => r.or(s),
    }
}

/// One VFS's replication status at `now_unix_ms`.
pub(super) fn vfs_status(k: Known<'_>, now_unix_ms: u64) -> VfsReplicationStatus {
    let point = last_point(&k);
    let state = if k.running_since_unix_ms.is_some() {
        ReplicationState::Running
    } else if k.paused.is_some() {
        ReplicationState::Paused
    } else if point.is_none() {
        ReplicationState::NeverReplicated
    } else {
        ReplicationState::Idle
    };
    VfsReplicationStatus {
        vfs: k.def.name.clone(),
        peer: k.def.replication.peer.clone(),
        state,
        running_since_unix_ms: k.running_since_unix_ms,
        paused_reason: k.paused.map(|p| {
            format!(
                "the pool {} of the DR site {} is full: the last cycle needed {} bytes, {} are free; {} cycle(s) refused",
                p.pool, p.site, p.needs, p.free, p.refused_cycles
            )
        }),
        rpo_lag_ms: point
            .as_ref()
            .and_then(|p| p.point_unix_ms)
            .map(|at| rpo_lag_ms(now_unix_ms, at)),
        last_point: point,
        at_risk_bytes: k.at_risk_bytes,
        trigger_at_risk_bytes: k.def.replication.trigger_at_risk_bytes,
        interval_s: k.def.replication.interval_s,
        last_cycle: k.last.cloned(),
        next_cycle: k.next,
    }
}

impl Cycles {
    /// What the scheduler knows of `def` now, for [`next_cycle`].
    pub(super) fn schedule(&self, agent: &Agent, def: &VfsDef, link: bool) -> Schedule {
        let start = self.starts.get(&def.name);
        Schedule {
            link,
            due: self.next_due.get(&def.name).copied(),
            first_delay: super::first_delay(def),
            started_once: start.is_some(),
            running: start.is_some_and(|s| s.running),
            paused: self.paused.contains_key(&def.name),
            triggered: triggered(agent, def),
        }
    }

    /// The replication status of every VFS active here.
    pub(super) fn statuses(&self, agent: &Agent, link: bool) -> Vec<VfsReplicationStatus> {
        let (now, now_ms) = (Instant::now(), unix_ms_now());
        agent
            .config()
            .vfs
            .iter()
            .map(|def| {
                let source = agent.store.source_state(&def.name).unwrap_or_else(|e| {
                    tracing::warn!(vfs = %def.name, event = "status_incomplete", error = %e,
                        "cannot read the replication progress for the status");
                    None
                });
                let known = Known {
                    def,
                    source: source.as_ref(),
                    last: self.last.get(&def.name),
                    running_since_unix_ms: self
                        .starts
                        .get(&def.name)
                        .filter(|s| s.running)
                        .map(|s| s.unix_ms),
                    paused: self.paused.get(&def.name),
                    at_risk_bytes: agent.at_risk_bytes(&def.name),
                    next: next_cycle(&self.schedule(agent, def, link), now, now_ms),
                };
                vfs_status(known, now_ms)
            })
            .collect()
    }
}

/// The data at risk of `def` passed its configured trigger.
pub(super) fn triggered(agent: &Agent, def: &VfsDef) -> bool {
    def.replication
        .trigger_at_risk_bytes
        .is_some_and(|t| agent.at_risk_bytes(&def.name) >= t)
}
