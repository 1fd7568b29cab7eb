//! Human-readable replication figures: the per-VFS block of `vfsdr status` and the line of
//! `vfsdr replicate --now`, in human units (`RPO lag 12.3 s`, `ratio 1.9x`, `next cycle in
//! 4m 10s`). Both render a [`CycleReport`] the same way.
use std::fmt::Write as _;

use super::show::bytes;
use crate::{
    api::{NextCycleWhy, Paused, ReplicationState, VfsReplicationStatus},
    daemon::CycleReport,
};

/// `850 ms`, `12.3 s`, `4m 10s`, `2h 05m`, `3d 04h`.
pub fn duration_ms(ms: u64) -> String {
    let s = ms / 1000;
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m {:02}s", s / 60, s % 60),
        3_600_000..86_400_000 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `2026-11-25 22:14:35.123 UTC`.
pub fn utc(unix_ms: u64) -> String {
    let (days, ms) = (unix_ms / 86_400_000, unix_ms % 86_400_000);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03} UTC",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// `changed 20.0 MiB, wire 10.5 MiB, ratio 1.9x, 35.2 MiB/s (wire 18.1 MiB/s), freeze 3.2 ms,
/// took 0.6 s`.
pub fn cycle_figures(r: &CycleReport) -> String {
    format!(
        "changed {}, zeroed {}, wire {}, ratio {}, {}/s (wire {}/s), freeze {:.1} ms, took {}",
        bytes(r.changed_bytes as f64),
        bytes(r.zeroed_bytes as f64),
        bytes(r.wire_bytes as f64),
        r.compression_ratio
            .map_or("-".to_owned(), |x| format!("{x:.1}x")),
        bytes(r.changed_bytes_per_s),
        bytes(r.wire_bytes_per_s),
        r.freeze_window_ms,
        duration_ms(r.duration_ms)
    )
}

/// `point 12 ms, diff 3 ms, ship+commit 560 ms, ack 4 ms`.
pub fn phases(r: &CycleReport) -> String {
    let p = &r.phases;
    format!(
        "point {:.1} ms (clones {:.1} ms, then freeze window {:.1} ms: FIFREEZE {:.1} ms, catch-up \
         {:.1} ms), diff {:.1} ms, ship+commit {:.1} ms, ack {:.1} ms",
        p.point_ms,
        p.preclone_ms,
        r.freeze_window_ms,
        p.freeze_ms,
        p.clone_ms,
        p.diff_ms,
        p.ship_commit_ms,
        p.ack_ms
    )
}

/// What `vfsdr replicate V --now` prints.
pub fn replicated(r: &CycleReport) -> String {
    let mut o = format!(
        "{} cycle {} committed as snapshot {} at the DR site: {}\n  phases: {}\n",
        if r.full { "full" } else { "incremental" },
        r.cycle,
        r.snapshot,
        cycle_figures(r),
        phases(r)
    );
    for t in &r.tracker_check {
        let _ = writeln!(
            o,
            "  tracker check {}: {}",
            t.volume,
            super::show::tracker_check(&t.check)
        );
    }
    if r.resumed_bytes > 0 {
        let _ = writeln!(
            o,
            "  the interrupted copy resumed: {} were at the DR site already",
            super::show::bytes(r.resumed_bytes as f64)
        );
    }
    o
}

/// The block of one VFS in `vfsdr status`, with its pause if it is paused.
pub fn vfs_block(s: &VfsReplicationStatus, paused: Option<&Paused>, now_unix_ms: u64) -> String {
    let mut o = String::new();
    let state = match s.state {
        ReplicationState::NeverReplicated => "never replicated".to_owned(),
        ReplicationState::Idle => "idle".to_owned(),
        ReplicationState::Running => match s.running_since_unix_ms {
            Some(t) => format!(
                "running (for {})",
                duration_ms(now_unix_ms.saturating_sub(t))
            ),
            None => "running".to_owned(),
        },
        ReplicationState::Paused => "PAUSED".to_owned(),
    };
    let _ = writeln!(o, "\nreplication of {} to {}: {state}", s.vfs, s.peer);
    match (s.state, paused) {
        (_, Some(p)) => {
            let _ = writeln!(
                o,
                "  replication paused: DR pool full at {} (needs {}, free {}); {} cycle(s) refused since {}, retried every interval",
                p.site,
                bytes(p.needs as f64),
                bytes(p.free as f64),
                p.refused_cycles,
                utc(p.since_unix_s * 1000)
            );
        }
        (ReplicationState::Paused, None) => {
            let _ = writeln!(
                o,
                "  replication paused: {}",
                s.paused_reason.as_deref().unwrap_or("no reason given")
            );
        }
        _ => {}
    }
    match &s.last_point {
        Some(p) => {
            let (when, lag) = match (p.point_unix_ms, s.rpo_lag_ms) {
                (Some(at), Some(lag)) => (utc(at), format!("RPO lag {}", duration_ms(lag))),
                _ => ("at an unrecorded time".to_owned(), "RPO lag unknown".into()),
            };
            let _ = writeln!(
                o,
                "  consistent point  {lag}  (cycle {}, snapshot {}, {when})",
                p.cycle, p.snapshot
            );
        }
        None => {
            let _ = writeln!(o, "  consistent point  none yet");
        }
    }
    let _ = writeln!(
        o,
        "  data at risk      {}{}",
        bytes(s.at_risk_bytes as f64),
        s.trigger_at_risk_bytes.map_or(String::new(), |t| format!(
            " (a cycle starts at {})",
            bytes(t as f64)
        ))
    );
    if let Some(r) = &s.last_cycle {
        let _ = writeln!(
            o,
            "  last cycle        {} ({}): {}",
            r.cycle,
            if r.full { "full" } else { "incremental" },
            cycle_figures(r)
        );
        let _ = writeln!(o, "  phases            {}", phases(r));
        for t in &r.tracker_check {
            let _ = writeln!(
                o,
                "  tracker check     {}: {}",
                t.volume,
                super::show::tracker_check(&t.check)
            );
        }
    }
    let _ = writeln!(o, "  next cycle        {}", next_cycle(s));
    o
}

fn next_cycle(s: &VfsReplicationStatus) -> String {
    let n = &s.next_cycle;
    let when = n.in_ms.map_or(String::new(), |ms| match ms {
        0 => "now".to_owned(),
        ms => format!("in {}", duration_ms(ms)),
    });
    let interval = duration_ms(s.interval_s * 1000);
    match n.why {
        NextCycleWhy::FirstAfterStart => format!("{when} (first after the agent's start)"),
        NextCycleWhy::Interval => format!("{when} (every {interval})"),
        NextCycleWhy::RetryPaused => format!("{when} (retry of the paused replication)"),
        NextCycleWhy::AtRiskTrigger => format!("{when} (data at risk passed the trigger)"),
        NextCycleWhy::AfterRunning => "when the running cycle ends (interval passed)".to_owned(),
        NextCycleWhy::NoPeerLink => "none: this site has no peer link".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::{ConsistentPoint, NextCycle},
        daemon::CyclePhases,
    };

    const NOW: u64 = 1_764_108_875_123;

    #[test]
    fn durations_and_times_read_like_them() {
        assert_eq!(duration_ms(850), "850 ms");
        assert_eq!(duration_ms(12_345), "12.3 s");
        assert_eq!(duration_ms(250_000), "4m 10s");
        assert_eq!(duration_ms(7_500_000), "2h 05m");
        assert_eq!(duration_ms(3 * 86_400_000 + 4 * 3_600_000), "3d 04h");
        assert_eq!(utc(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(utc(NOW), "2025-11-25 22:14:35.123 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00.000 UTC");
    }

    fn status() -> VfsReplicationStatus {
        VfsReplicationStatus {
            vfs: "fs1".into(),
            peer: "dr1".into(),
            state: ReplicationState::Idle,
            running_since_unix_ms: None,
            paused_reason: None,
            last_point: Some(ConsistentPoint {
                cycle: 12,
                snapshot: 12,
                point_unix_ms: Some(NOW - 12_300),
            }),
            rpo_lag_ms: Some(12_300),
            at_risk_bytes: 4 << 20,
            trigger_at_risk_bytes: Some(64 << 20),
            interval_s: 300,
            last_cycle: Some(
                CycleReport {
                    vfs: "fs1".into(),
                    cycle: 12,
                    snapshot: 12,
                    changed_bytes: 19 << 20,
                    wire_bytes: 10 << 20,
                    freeze_window_ms: 3.2,
                    duration_ms: 2000,
                    point_unix_ms: NOW - 12_300,
                    phases: CyclePhases {
                        point_ms: 12.0,
                        preclone_ms: 5.0,
                        freeze_ms: 1.0,
                        clone_ms: 2.0,
                        diff_ms: 3.0,
                        ship_commit_ms: 1000.0,
                        ack_ms: 4.0,
                    },
                    ..Default::default()
                }
                .with_rates(),
            ),
            next_cycle: NextCycle {
                why: NextCycleWhy::Interval,
                in_ms: Some(250_000),
                unix_ms: Some(NOW + 250_000),
            },
        }
    }

    #[test]
    fn a_vfs_block_says_lag_ratio_rates_phases_and_next_cycle() {
        let text = vfs_block(&status(), None, NOW);
        let expected = "
replication of fs1 to dr1: idle
  consistent point  RPO lag 12.3 s  (cycle 12, snapshot 12, 2025-11-25 22:14:22.823 UTC)
  data at risk      4.0 MiB (a cycle starts at 64.0 MiB)
  last cycle        12 (incremental): changed 19.0 MiB, zeroed 0 B, wire 10.0 MiB, ratio 1.9x, 9.5 MiB/s (wire 10.0 MiB/s), freeze 3.2 ms, took 2.0 s
  phases            point 12.0 ms (clones 5.0 ms, then freeze window 3.2 ms: FIFREEZE 1.0 ms, catch-up 2.0 ms), diff 3.0 ms, ship+commit 1000.0 ms, ack 4.0 ms
  next cycle        in 4m 10s (every 5m 00s)
";
        assert_eq!(text, expected);
    }

    #[test]
    fn a_vfs_block_says_what_is_not_there_yet() {
        let s = VfsReplicationStatus {
            state: ReplicationState::Running,
            running_since_unix_ms: Some(NOW - 1_500),
            last_point: None,
            rpo_lag_ms: None,
            trigger_at_risk_bytes: None,
            last_cycle: None,
            next_cycle: NextCycle {
                why: NextCycleWhy::AfterRunning,
                in_ms: None,
                unix_ms: None,
            },
            ..status()
        };
        let text = vfs_block(&s, None, NOW);
        assert!(text.contains("fs1 to dr1: running (for 1.5 s)"), "{text}");
        assert!(text.contains("consistent point  none yet"), "{text}");
        assert!(text.contains("data at risk      4.0 MiB\n"), "{text}");
        assert!(!text.contains("last cycle"), "{text}");
        assert!(text.contains("when the running cycle ends"), "{text}");
        let paused = VfsReplicationStatus {
            state: ReplicationState::Paused,
            paused_reason: Some("the pool /pool of the DR site dr1 is full".into()),
            ..status()
        };
        let pause = Paused {
            vfs: "fs1".into(),
            site: "dr1".into(),
            pool: "/pool".into(),
            needs: 64 << 20,
            free: 20 << 20,
            since_unix_s: NOW / 1000,
            refused_cycles: 2,
        };
        let text = vfs_block(&paused, Some(&pause), NOW);
        assert!(
            text.contains("fs1 to dr1: PAUSED\n  replication paused: DR pool full at dr1 (needs 64.0 MiB, free 20.0 MiB); 2 cycle(s) refused since 2025-11-25 22:14:35.000 UTC, retried every interval\n"),
            "{text}"
        );
        let text = vfs_block(&paused, None, NOW);
        assert!(
            text.contains("  replication paused: the pool /pool of the DR site dr1 is full\n"),
            "{text}"
        );
    }

    #[test]
    fn replicate_prints_the_same_figures_as_the_status() {
        let r = status().last_cycle.unwrap();
        let text = replicated(&r);
        assert!(
            text.starts_with("incremental cycle 12 committed as snapshot 12 at the DR site: "),
            "{text}"
        );
        assert!(text.contains(&cycle_figures(&r)), "{text}");
        assert!(
            text.contains(&format!("\n  phases: {}\n", phases(&r))),
            "{text}"
        );
    }
}
