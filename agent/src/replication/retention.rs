//! Which snapshots of a VFS the DR site keeps: the retention grid of its definition.
//!
//! Each [`RetentionRule`] `{every_s, for_s}` looks at the snapshots younger than `for_s`
//! (age = `now - created`, a snapshot dated in the future counting as age 0) and keeps every
//! one of them when `every_s` is 0, otherwise one per period of `every_s` seconds: the
//! periods are the buckets `created_unix / every_s` (aligned to the Unix epoch, so daily
//! buckets are UTC days), and a bucket keeps its newest snapshot, as the grids of zrepl and
//! sanoid do. Newest is the latest `created_unix`, the higher id between equal times. Once a
//! bucket's period is over, its newest snapshot no longer changes, so a snapshot a rule keeps
//! stays kept until it leaves the rule's window; only in the current period does a newer
//! snapshot take over.
//!
//! A snapshot is kept while some rule keeps it, and the latest snapshot (the highest id, which
//! the replica images hold and the next delta applies to) is always kept, even with no rule
//! or a clock stepped back.
//!
//! Each rule is one pass over the snapshots with a hash map of buckets: 100,000 snapshots take
//! a few milliseconds.

use std::collections::{BTreeSet, HashMap};

use crate::config::{Retention, RetentionRule};

/// The ids of the snapshots to keep among `snapshots` (`(id, created_unix)`, in any order) at
/// `now_unix`.
pub fn keep(snapshots: &[(u64, u64)], rules: &Retention, now_unix: u64) -> BTreeSet<u64> {
    let mut kept = BTreeSet::new();
    let Some(&(latest, _)) = snapshots.iter().max_by_key(|&&(id, _)| id) else {
        return kept;
    };
    kept.insert(latest);
    for rule in &rules.rules {
        keep_by_rule(snapshots, rule, now_unix, &mut kept);
    }
    kept
}

/// The ids of the snapshots to delete among `snapshots`: those [`keep`] does not keep, in
/// increasing order.
pub fn prune(snapshots: &[(u64, u64)], rules: &Retention, now_unix: u64) -> Vec<u64> {
    let kept = keep(snapshots, rules, now_unix);
    let pruned: BTreeSet<u64> = snapshots
        .iter()
        .map(|&(id, _)| id)
        .filter(|id| !kept.contains(id))
        .collect();
    pruned.into_iter().collect()
}

fn keep_by_rule(
    snapshots: &[(u64, u64)],
    rule: &RetentionRule,
    now_unix: u64,
    kept: &mut BTreeSet<u64>,
) {
    let young = snapshots
        .iter()
        .filter(|&&(_, created)| now_unix.saturating_sub(created) < rule.for_s);
    if rule.every_s == 0 {
        kept.extend(young.map(|&(id, _)| id));
        return;
    }
    // bucket -> its newest (created_unix, id)
    let mut newest: HashMap<u64, (u64, u64)> = HashMap::new();
    for &(id, created) in young {
        let best = newest
            .entry(created / rule.every_s)
            .or_insert((created, id));
        *best = (*best).max((created, id));
    }
    kept.extend(newest.into_values().map(|(_, id)| id));
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    const MIN: u64 = 60;
    const H: u64 = 3600;
    const D: u64 = 24 * H;

    fn grid(rules: &[(u64, u64)]) -> Retention {
        Retention {
            rules: rules
                .iter()
                .map(|&(every_s, for_s)| RetentionRule { every_s, for_s })
                .collect(),
        }
    }

    /// `days` of history every 5 minutes, ending 5 minutes before midnight UTC of day
    /// `DAY0 + days`; id `k` for the snapshot `k` steps after the first.
    const DAY0: u64 = 20_000;
    const STEP: u64 = 5 * MIN;

    fn history(days: u64) -> Vec<(u64, u64)> {
        (0..days * D / STEP)
            .map(|k| (k, DAY0 * D + k * STEP))
            .collect()
    }

    /// The default grid: every snapshot for 1 hour, hourly for 1 day, daily for 30 days.
    #[test]
    fn the_default_grid_keeps_the_last_hour_then_hours_then_days() {
        let rules = Retention::default();
        assert_eq!(rules, grid(&[(0, H), (H, D), (D, 30 * D)]));
        let snapshots = history(60);
        let end = DAY0 * D + 60 * D; // midnight after the last snapshot
        let latest = snapshots.len() as u64 - 1;
        // A minute after the last snapshot: it is 1 minute old, and the one `j` steps before
        // it `j * 5 + 1` minutes, i.e. the snapshot at `end - j * STEP` has age
        // `j * STEP - 4 min`, where j >= 1.
        let now = end - STEP + MIN;
        let id_at = |j: u64| latest + 1 - j;
        // Every snapshot younger than 1 hour: j * 300 - 240 < 3600, so j = 1..=12, the whole
        // last hour of the last day.
        let last_hour: BTreeSet<u64> = (1..=12).map(id_at).collect();
        // Younger than a day: j * 300 - 240 < 86400, j = 1..=288: the 24 whole hours of the
        // last day, each keeping the snapshot 5 minutes before its end, `end - h * H - STEP`
        // (j = 12 h + 1), of which the last hour's (h = 0) is already in `last_hour`.
        let hourly: BTreeSet<u64> = (1..24).map(|h| id_at(12 * h + 1)).collect();
        // Younger than 30 days: j * 300 - 240 < 30 * 86400, j = 1..=8640: the 30 whole last
        // days, each keeping the snapshot 5 minutes before its midnight, `end - d * D - STEP`
        // (j = 288 d + 1); the last day's (d = 0) is already in `last_hour`, and no other is
        // in the last day.
        let daily: BTreeSet<u64> = (1..30).map(|d| id_at(288 * d + 1)).collect();
        assert_eq!((last_hour.len(), hourly.len(), daily.len()), (12, 23, 29));
        assert!(last_hour.is_disjoint(&hourly) && last_hour.is_disjoint(&daily));
        assert!(hourly.is_disjoint(&daily));
        let expected: BTreeSet<u64> = last_hour
            .iter()
            .chain(&hourly)
            .chain(&daily)
            .copied()
            .collect();
        assert_eq!(expected.len(), 64);

        let kept = keep(&snapshots, &rules, now);
        assert_eq!(kept, expected);
        assert!(kept.contains(&latest));
        let pruned = prune(&snapshots, &rules, now);
        assert_eq!(pruned.len(), snapshots.len() - 64);
        assert!(pruned.windows(2).all(|w| w[0] < w[1]));
        assert!(pruned.iter().all(|id| !kept.contains(id)));
        // Kept daily snapshots are the last of their UTC day.
        for id in &daily {
            assert_eq!((snapshots[*id as usize].1 + STEP) % D, 0);
        }
    }

    /// The grid is stable: what is kept at one time and is still in a rule's window after the
    /// next snapshot arrives stays kept, except the newest of the current period.
    #[test]
    fn a_kept_snapshot_stays_kept_while_its_rule_covers_it() {
        let rules = Retention::default();
        let snapshots = history(10);
        let t = snapshots.last().unwrap().1;
        let before = keep(&snapshots, &rules, t);
        let mut next = snapshots.clone();
        next.push((snapshots.len() as u64, t + STEP));
        let after = keep(&next, &rules, t + STEP);
        let dropped: Vec<u64> = before.difference(&after).copied().collect();
        // Only the snapshot leaving the last hour may go: the previous newest of the current
        // hour and day is now 5 minutes old, still in the last hour.
        assert!(dropped.len() <= 1, "{dropped:?}");
        for id in dropped {
            let age = t + STEP - snapshots[id as usize].1;
            assert!(age >= H, "snapshot {id} ({age} s old) dropped");
        }
    }

    #[test]
    fn the_latest_snapshot_is_always_kept() {
        // Every snapshot older than every rule's window.
        let snapshots = [(1, 1_000), (2, 2_000), (3, 3_000)];
        let rules = grid(&[(0, 100), (10, 500)]);
        let now = 1_000_000;
        assert_eq!(keep(&snapshots, &rules, now), BTreeSet::from([3]));
        assert_eq!(prune(&snapshots, &rules, now), [1, 2]);
        // The latest is the highest id even when the clock stepped back, and a snapshot dated
        // after `now` counts as brand new.
        let stepped = [(1, 5_000), (2, 6_000), (3, 4_000)];
        assert_eq!(
            keep(&stepped, &grid(&[(0, 10)]), 5_500),
            BTreeSet::from([2, 3])
        );
    }

    #[test]
    fn no_rule_keeps_only_the_latest() {
        let snapshots = history(2);
        let latest = snapshots.len() as u64 - 1;
        let now = snapshots.last().unwrap().1;
        let kept = keep(&snapshots, &grid(&[]), now);
        assert_eq!(kept, BTreeSet::from([latest]));
        assert_eq!(
            prune(&snapshots, &grid(&[]), now).len(),
            snapshots.len() - 1
        );
        assert!(keep(&[], &Retention::default(), now).is_empty());
        assert!(prune(&[], &Retention::default(), now).is_empty());
    }

    /// Buckets are aligned to the epoch, keep their newest, and the window is `age < for_s`.
    #[test]
    fn each_bucket_keeps_its_newest() {
        // Buckets of 10 s: [90, 100) [100, 110) [110, 120); the window at now = 120 with
        // for_s = 30 is created > 90.
        let snapshots = [
            (1, 90),  // age 30: outside
            (2, 95),  // bucket 9, alone in the window
            (3, 101), // bucket 10
            (4, 109), // bucket 10, newest
            (5, 109), // same time, higher id: newest
            (6, 110), // bucket 11
            (7, 112), // bucket 11, newest; also the latest
        ];
        let kept = keep(&snapshots, &grid(&[(10, 30)]), 120);
        assert_eq!(kept, BTreeSet::from([2, 5, 7]));
        // Order of the input does not matter.
        let mut reversed = snapshots;
        reversed.reverse();
        assert_eq!(keep(&reversed, &grid(&[(10, 30)]), 120), kept);
        // Rules add up: every snapshot younger than 11 s adds 6 (age 10).
        let kept = keep(&snapshots, &grid(&[(10, 30), (0, 11)]), 120);
        assert_eq!(kept, BTreeSet::from([2, 5, 6, 7]));
    }

    #[test]
    fn it_is_fast_for_100000_snapshots() {
        let snapshots: Vec<(u64, u64)> = (0..100_000).map(|k| (k, DAY0 * D + k * MIN)).collect();
        let now = snapshots.last().unwrap().1;
        let start = Instant::now();
        let kept = keep(&snapshots, &Retention::default(), now);
        let pruned = prune(&snapshots, &Retention::default(), now);
        let elapsed = start.elapsed();
        eprintln!(
            "retention of 100,000 snapshots: {} kept, {} pruned, {elapsed:?}",
            kept.len(),
            pruned.len()
        );
        assert_eq!(kept.len() + pruned.len(), snapshots.len());
        // Minutely snapshots; the last, `now`, is 99,999 minutes in: day 69 at 10:39.
        // Last hour: 09:40..=10:39, 60 snapshots. Last day: from day 68 10:40, 25 hour
        // buckets (day 68 10..=23, day 69 0..=10), whose newest are :59 or, for day 69 hour
        // 10, `now`; those of day 69 hours 9 and 10 are in the last hour: 23 more. Last 30
        // days: from day 39 10:40, 31 day buckets (39..=69), whose newest are 23:59 or `now`;
        // day 69's is `now` and day 68's an hourly one: 29 more.
        assert_eq!(kept.len(), 60 + 23 + 29);
    }
}
