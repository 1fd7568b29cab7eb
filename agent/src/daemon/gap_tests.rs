//! The tracker-gap check and the DR-pool pause in the agent, against fake probes.
use vfsdr_common::{EXTENT_WRITE, counter};

use super::*;
use crate::{
    config::test_vfs,
    daemon::{Cycles, replicate::CycleOutcome, report::CycleReport},
    replication::{gap::GapResult, wire::PoolFull},
    tracking::{BlockRange, BlockSet, FakeProbes},
    volumes::DevId,
};

fn agent() -> (Agent, FakeProbes, DevId) {
    let mut cfg = pooled_config();
    cfg.vfs = vec![test_vfs("fs1", "site-b", "/m1")];
    let (agent, probes) =
        start_with(cfg, devices().with_image("/pool/volumes/fs1/data.img")).unwrap();
    let dev = *probes.state.lock().unwrap().watched.keys().next().unwrap();
    (agent, probes, dev)
}

fn blocks(ranges: &[(u64, u64)]) -> BlockSet {
    ranges
        .iter()
        .map(|&(start, end)| BlockRange { start, end })
        .collect()
}

/// A cycle as `Cycles::start` and `finish` run it: marks and a staged window first, then the
/// check with what "FIEMAP" found changed.
fn cycle(agent: &mut Agent, cycle: u64, full: bool, changed: &[(u64, u64)]) -> GapResult {
    agent.take_vfs_marks("fs1");
    agent.stage_gap_windows("fs1");
    let mut outcome = CycleOutcome {
        report: CycleReport {
            vfs: "fs1".into(),
            cycle,
            snapshot: cycle,
            full,
            changed_bytes: 0,
            zeroed_bytes: 0,
            wire_bytes: 0,
            freeze_window_ms: 0.0,
            duration_ms: 0,
            point_unix_s: 0,
            tracker_check: Vec::new(),
            ..Default::default()
        },
        changed: vec![("data".into(), blocks(changed))],
    };
    agent.check_tracker_gaps(&mut outcome);
    let [check] = &outcome.report.tracker_check[..] else {
        panic!("{:?}", outcome.report.tracker_check)
    };
    assert_eq!(check.volume, "data");
    check.check.clone()
}

/// 8 sectors per 4 KiB block.
fn write(probes: &FakeProbes, dev: DevId, block: u64, n: u64) {
    probes.write(dev, EXTENT_WRITE, block * 8, n * 8);
}

#[test]
fn every_changed_block_tracked_is_ok_and_extra_tracked_blocks_are_counted() {
    let (mut agent, probes, dev) = agent();
    let first = cycle(&mut agent, 1, true, &[(0, 4)]);
    assert!(matches!(first, GapResult::NotChecked { ref reason } if reason.contains("full copy")));
    write(&probes, dev, 10, 2);
    write(&probes, dev, 50, 1); // rewritten with the same data: FIEMAP does not see it
    assert_eq!(
        cycle(&mut agent, 2, false, &[(10, 12)]),
        GapResult::Ok {
            changed_blocks: 2,
            extra_blocks: 1
        }
    );
}

#[test]
fn a_changed_block_the_tracker_missed_is_a_gap_naming_its_range() {
    let (mut agent, probes, dev) = agent();
    cycle(&mut agent, 1, true, &[(0, 4)]);
    write(&probes, dev, 10, 2);
    match cycle(&mut agent, 2, false, &[(10, 13)]) {
        GapResult::Gap {
            missing_blocks,
            first_missing,
            ..
        } => {
            assert_eq!(missing_blocks, 1);
            assert_eq!(first_missing[0].offset, 12 * 4096);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn writes_between_the_mark_and_the_point_count_and_a_failed_cycle_keeps_the_window() {
    let (mut agent, probes, dev) = agent();
    cycle(&mut agent, 1, true, &[]);
    write(&probes, dev, 5, 1);
    // Cycle 2 fails after its mark: the blocks it took stay in the window of cycle 1.
    agent.take_vfs_marks("fs1");
    agent.stage_gap_windows("fs1");
    agent.abort_gap_windows("fs1");
    // Cycle 2 again; a write lands after the mark, before the point.
    agent.take_vfs_marks("fs1");
    agent.stage_gap_windows("fs1");
    write(&probes, dev, 7, 1);
    let mut outcome = CycleOutcome {
        report: CycleReport {
            vfs: "fs1".into(),
            cycle: 2,
            snapshot: 2,
            full: false,
            changed_bytes: 0,
            zeroed_bytes: 0,
            wire_bytes: 0,
            freeze_window_ms: 0.0,
            duration_ms: 0,
            point_unix_s: 0,
            tracker_check: Vec::new(),
            ..Default::default()
        },
        changed: vec![("data".into(), blocks(&[(5, 6), (7, 8)]))],
    };
    agent.check_tracker_gaps(&mut outcome);
    assert!(
        matches!(
            outcome.report.tracker_check[0].check,
            GapResult::Ok {
                changed_blocks: 2,
                ..
            }
        ),
        "{:?}",
        outcome.report.tracker_check
    );
    // Cycle 3's window started at cycle 2's mark: block 7 is in it, block 5 is not.
    assert!(matches!(
        cycle(&mut agent, 3, false, &[(5, 6)]),
        GapResult::Gap {
            missing_blocks: 1,
            ..
        }
    ));
}

#[test]
fn without_a_continuous_window_the_check_says_why_it_was_not_made() {
    let (mut agent, probes, dev) = agent();
    // The previous point was taken before this agent started.
    let r = cycle(&mut agent, 5, false, &[(0, 1)]);
    assert!(
        matches!(r, GapResult::NotChecked { ref reason } if reason.contains("restarted")),
        "{r:?}"
    );
    // Records dropped by the kernel since the previous point.
    write(&probes, dev, 0, 1);
    probes.state.lock().unwrap().counters[counter::DROPPED as usize] += 3;
    let r = cycle(&mut agent, 6, false, &[(0, 1)]);
    assert!(
        matches!(r, GapResult::NotChecked { ref reason } if reason.contains("dropped 3")),
        "{r:?}"
    );
    // The window belongs to another cycle than the delta's base.
    let r = cycle(&mut agent, 9, false, &[(0, 1)]);
    assert!(
        matches!(r, GapResult::NotChecked { ref reason } if reason.contains("cycle 6")),
        "{r:?}"
    );
}

#[test]
fn a_full_dr_pool_alerts_once_survives_a_restart_and_a_committed_cycle_resumes() {
    let (mut agent, _, _) = agent();
    let mut cycles = Cycles::default();
    let full = |free| PoolFull {
        pool: "/pool".into(),
        needs: 100,
        free,
    };
    cycles.pool_full(&mut agent.store, "site-a", "fs1", "site-b", &full(10));
    cycles.pool_full(&mut agent.store, "site-a", "fs1", "site-b", &full(20));
    let p = cycles.paused["fs1"].clone();
    assert_eq!(
        (p.site.as_str(), p.needs, p.free, p.refused_cycles),
        ("site-b", 100, 20, 2)
    );
    // A restarted agent takes the pause back from the store.
    let mut restarted = Cycles::default();
    restarted.restore_paused(&agent.store, "site-a", ["fs1", "ghost"]);
    assert_eq!(restarted.paused.get("fs1"), Some(&p));
    restarted.resumed(&mut agent.store, "site-a", "fs1", 7);
    assert!(restarted.paused.is_empty());
    let mut again = Cycles::default();
    again.restore_paused(&agent.store, "site-a", ["fs1"]);
    assert!(
        again.paused.is_empty(),
        "the end of the pause is recorded too"
    );
}
