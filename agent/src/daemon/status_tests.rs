//! The per-VFS replication status: the pure decisions (next cycle, RPO lag, state) with an
//! injected clock, and the agent's status on fake probes before a cycle, after one, and after a
//! restart (what the store knows).
use std::time::{Duration, Instant};

use vfsdr_common::EXTENT_WRITE;

use super::*;
use crate::{
    api::{NextCycle, NextCycleWhy, Paused, ReplicationState},
    config::test_vfs,
    daemon::{
        CycleDone, Cycles,
        replicate::CycleOutcome,
        report::{CyclePhases, CycleReport},
        status::{Known, LastStart, Schedule, next_cycle, rpo_lag_ms, vfs_status},
    },
    state::SourceState,
    tracking::BlockSet,
};

const NOW_MS: u64 = 1_764_108_875_000;

fn schedule() -> Schedule {
    Schedule {
        link: true,
        due: None,
        first_delay: Duration::from_secs(60),
        started_once: false,
        running: false,
        paused: false,
        triggered: false,
    }
}

fn next(s: Schedule, now: Instant) -> (NextCycleWhy, Option<u64>) {
    let n = next_cycle(&s, now, NOW_MS);
    assert_eq!(n.unix_ms, n.in_ms.map(|ms| NOW_MS + ms), "{n:?}");
    (n.why, n.in_ms)
}

#[test]
fn the_next_cycle_follows_the_scheduler() {
    let now = Instant::now();
    // Before the scheduler's first look: the first delay after start.
    assert_eq!(
        next(schedule(), now),
        (NextCycleWhy::FirstAfterStart, Some(60_000))
    );
    let due = Some(now + Duration::from_millis(250_000));
    let ran = Schedule {
        due,
        started_once: true,
        ..schedule()
    };
    assert_eq!(next(ran, now), (NextCycleWhy::Interval, Some(250_000)));
    // Overdue between two ticks: now.
    let overdue = Schedule {
        due: Some(now),
        ..ran
    };
    assert_eq!(next(overdue, now), (NextCycleWhy::Interval, Some(0)));
    // Running: the interval counts from its start; once passed, the next follows it.
    let running = Schedule {
        running: true,
        ..ran
    };
    assert_eq!(next(running, now), (NextCycleWhy::Interval, Some(250_000)));
    let late = Schedule {
        running: true,
        ..overdue
    };
    assert_eq!(next(late, now), (NextCycleWhy::AfterRunning, None));
    // The data-at-risk trigger: at the next tick, unless a cycle runs.
    let triggered = Schedule {
        triggered: true,
        ..ran
    };
    assert_eq!(next(triggered, now), (NextCycleWhy::AtRiskTrigger, Some(0)));
    assert_eq!(
        next(
            Schedule {
                running: true,
                ..triggered
            },
            now
        ),
        (NextCycleWhy::Interval, Some(250_000))
    );
    let paused = Schedule {
        paused: true,
        ..ran
    };
    assert_eq!(
        next(paused, now),
        (NextCycleWhy::RetryPaused, Some(250_000))
    );
    let alone = Schedule { link: false, ..ran };
    assert_eq!(next(alone, now), (NextCycleWhy::NoPeerLink, None));
}

#[test]
fn the_rpo_lag_is_the_age_of_the_point() {
    assert_eq!(rpo_lag_ms(NOW_MS, NOW_MS - 12_345), 12_345);
    assert_eq!(rpo_lag_ms(NOW_MS, NOW_MS), 0);
    // A clock that went back does not make a huge lag.
    assert_eq!(rpo_lag_ms(NOW_MS, NOW_MS + 5), 0);
}

fn report(cycle: u64, point_unix_ms: u64) -> CycleReport {
    CycleReport {
        vfs: "fs1".into(),
        cycle,
        snapshot: cycle,
        changed_bytes: 30 << 20,
        wire_bytes: 10 << 20,
        freeze_window_ms: 4.5,
        duration_ms: 3000,
        point_unix_s: point_unix_ms / 1000,
        point_unix_ms,
        phases: CyclePhases {
            point_ms: 20.0,
            preclone_ms: 5.0,
            freeze_ms: 1.0,
            clone_ms: 2.0,
            diff_ms: 80.0,
            ship_commit_ms: 2000.0,
            ack_ms: 900.0,
        },
        ..Default::default()
    }
    .with_rates()
}

fn known<'a>(def: &'a crate::config::VfsDef) -> Known<'a> {
    Known {
        def,
        source: None,
        last: None,
        running_since_unix_ms: None,
        paused: None,
        at_risk_bytes: 4096,
        next: NextCycle {
            why: NextCycleWhy::FirstAfterStart,
            in_ms: Some(60_000),
            unix_ms: Some(NOW_MS + 60_000),
        },
    }
}

#[test]
fn the_state_and_point_come_from_the_last_report_or_the_store() {
    let def = test_vfs("fs1", "site-b", "/m1");
    let s = vfs_status(known(&def), NOW_MS);
    assert_eq!(s.state, ReplicationState::NeverReplicated);
    assert_eq!(
        (s.last_point, s.rpo_lag_ms, s.at_risk_bytes),
        (None, None, 4096)
    );
    assert_eq!((s.peer.as_str(), s.interval_s), ("site-b", 60));
    // Running its first cycle.
    let s = vfs_status(
        Known {
            running_since_unix_ms: Some(NOW_MS - 800),
            ..known(&def)
        },
        NOW_MS,
    );
    assert_eq!(
        (s.state, s.running_since_unix_ms),
        (ReplicationState::Running, Some(NOW_MS - 800))
    );
    // After a cycle: its point, the lag at the injected time, its figures.
    let last = report(3, NOW_MS - 12_300);
    let s = vfs_status(
        Known {
            last: Some(&last),
            ..known(&def)
        },
        NOW_MS,
    );
    assert_eq!(s.state, ReplicationState::Idle);
    let p = s.last_point.unwrap();
    assert_eq!(
        (p.cycle, p.snapshot, p.point_unix_ms),
        (3, 3, Some(NOW_MS - 12_300))
    );
    assert_eq!(s.rpo_lag_ms, Some(12_300));
    let c = s.last_cycle.unwrap();
    assert_eq!(c.compression_ratio, Some(3.0));
    assert_eq!(c.changed_bytes_per_s, (10 << 20) as f64);
    assert_eq!(c.wire_bytes_per_s, (5 << 20) as f64);
    // After a restart only the store knows: the point and its time, no last cycle.
    let stored = SourceState {
        last_acked: Some(7),
        clones: serde_json::json!([]),
        initial_done: true,
        point_unix_ms: Some(NOW_MS - 2_000),
        updated_unix: NOW_MS / 1000,
        pending: serde_json::Value::Null,
        paused: serde_json::Value::Null,
    };
    let s = vfs_status(
        Known {
            source: Some(&stored),
            ..known(&def)
        },
        NOW_MS,
    );
    assert_eq!(
        (s.state, s.rpo_lag_ms),
        (ReplicationState::Idle, Some(2_000))
    );
    assert_eq!(s.last_point.as_ref().map(|p| p.cycle), Some(7));
    assert!(s.last_cycle.is_none());
    // An older agent did not record the time: the point, but no lag.
    let untimed = SourceState {
        point_unix_ms: None,
        ..stored.clone()
    };
    let s = vfs_status(
        Known {
            source: Some(&untimed),
            ..known(&def)
        },
        NOW_MS,
    );
    assert_eq!(
        (s.last_point.map(|p| p.cycle), s.rpo_lag_ms),
        (Some(7), None)
    );
    // Paused, with the reason.
    let paused = Paused {
        vfs: "fs1".into(),
        site: "site-b".into(),
        pool: "/pool".into(),
        needs: 100,
        free: 10,
        since_unix_s: 0,
        refused_cycles: 2,
    };
    let s = vfs_status(
        Known {
            paused: Some(&paused),
            source: Some(&stored),
            ..known(&def)
        },
        NOW_MS,
    );
    assert_eq!(s.state, ReplicationState::Paused);
    let reason = s.paused_reason.unwrap();
    assert!(
        reason.contains("site-b") && reason.contains("2 cycle(s)"),
        "{reason}"
    );
}

fn agent() -> Agent {
    let mut cfg = pooled_config();
    let mut def = test_vfs("fs1", "site-b", "/m1");
    def.replication.interval_s = 300;
    cfg.vfs = vec![def];
    let (agent, probes) =
        start_with(cfg, devices().with_image("/pool/volumes/fs1/data.img")).unwrap();
    let dev = *probes.state.lock().unwrap().watched.keys().next().unwrap();
    probes.write(dev, EXTENT_WRITE, 0, 16);
    agent
}

#[test]
fn the_agent_reports_every_vfs_before_after_a_cycle_and_after_a_restart() {
    let mut agent = agent();
    agent.poll().unwrap();
    let mut cycles = Cycles::default();
    // Before any cycle.
    let [s] = &cycles.statuses(&agent, true)[..] else {
        panic!("one VFS")
    };
    assert_eq!(s.state, ReplicationState::NeverReplicated);
    assert_eq!(s.at_risk_bytes, 8192);
    assert_eq!(
        (s.next_cycle.why, s.next_cycle.in_ms),
        (NextCycleWhy::FirstAfterStart, Some(60_000))
    );
    // A cycle runs, as `Cycles::start` records it, then is committed.
    agent.take_vfs_marks("fs1");
    agent.stage_gap_windows("fs1");
    cycles
        .next_due
        .insert("fs1".into(), Instant::now() + Duration::from_secs(300));
    cycles.running.insert("fs1".into());
    let started = crate::daemon::report::unix_ms_now();
    cycles.starts.insert(
        "fs1".into(),
        LastStart {
            unix_ms: started,
            running: true,
        },
    );
    let [s] = &cycles.statuses(&agent, true)[..] else {
        panic!("one VFS")
    };
    assert_eq!(
        (s.state, s.running_since_unix_ms, s.at_risk_bytes),
        (ReplicationState::Running, Some(started), 0)
    );
    let point = crate::daemon::report::unix_ms_now();
    agent
        .store
        .source_acked("fs1", 1, &serde_json::json!([]), Some(point))
        .unwrap();
    let done = CycleDone {
        vfs: "fs1".into(),
        result: Ok(CycleOutcome {
            report: report(1, point),
            changed: vec![("data".into(), BlockSet::default())],
        }),
        reply: None,
    };
    cycles.finish(&mut agent, "site-a", done);
    let [s] = &cycles.statuses(&agent, true)[..] else {
        panic!("one VFS")
    };
    assert_eq!(s.state, ReplicationState::Idle);
    assert_eq!(s.last_point.as_ref().unwrap().point_unix_ms, Some(point));
    assert!(s.rpo_lag_ms.is_some());
    assert_eq!(s.last_cycle.as_ref().unwrap().compression_ratio, Some(3.0));
    assert_eq!(s.next_cycle.why, NextCycleWhy::Interval);
    assert!(s.next_cycle.in_ms.unwrap() <= 300_000);
    // A restarted scheduler knows nothing; the store still has the point and its time.
    let restarted = Cycles::default();
    let [s] = &restarted.statuses(&agent, true)[..] else {
        panic!("one VFS")
    };
    assert_eq!(s.state, ReplicationState::Idle);
    let p = s.last_point.as_ref().unwrap();
    assert_eq!((p.cycle, p.snapshot, p.point_unix_ms), (1, 1, Some(point)));
    assert!(s.last_cycle.is_none());
    assert_eq!(s.next_cycle.why, NextCycleWhy::FirstAfterStart);
    // Without a peer link nothing is scheduled.
    let s = &restarted.statuses(&agent, false)[0];
    assert_eq!(s.next_cycle.why, NextCycleWhy::NoPeerLink);
}
