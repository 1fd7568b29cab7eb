//! Tracker tests against the fake probes.
use std::time::{Duration, Instant};

use vfsdr_common::{EXTENT_DISCARD, EXTENT_WRITE, Extent};

use super::{BlockRange, FakeProbes, Probes, TrackError, Tracker};
use crate::volumes::DevId;

const A: DevId = DevId::new(7, 1);
const B: DevId = DevId::new(7, 2);

fn setup() -> (Tracker, FakeProbes) {
    let probes = FakeProbes::default();
    let mut t = Tracker::new();
    let mut p: Box<dyn Probes> = Box::new(probes.clone());
    t.watch(p.as_mut(), "a", A).unwrap();
    t.watch(p.as_mut(), "b", B).unwrap();
    (t, probes)
}

fn ranges(c: &super::Changes) -> Vec<(u64, u64)> {
    c.ranges
        .iter()
        .map(|r: &BlockRange| (r.start, r.end))
        .collect()
}

#[test]
fn extents_land_in_their_volume_as_4k_blocks() {
    let (mut t, mut p) = setup();
    p.write(A, EXTENT_WRITE, 0, 8); // block 0
    p.write(A, EXTENT_WRITE, 9, 1); // sector 9 -> block 1
    p.write(B, EXTENT_DISCARD, 80, 16); // blocks 10..12
    t.poll(&mut p, Instant::now()).unwrap();
    assert_eq!(ranges(&t.changed("a").unwrap()), [(0, 2)]);
    assert_eq!(ranges(&t.changed("b").unwrap()), [(10, 12)]);
}

#[test]
fn pending_extents_count_and_repeat_harmlessly() {
    let (mut t, mut p) = setup();
    p.state.lock().unwrap().pending.push(Extent {
        dev: A.kernel(),
        kind: EXTENT_WRITE,
        sector: 800,
        nr_sectors: 8,
        bios: 1,
    });
    t.poll(&mut p, Instant::now()).unwrap();
    t.poll(&mut p, Instant::now()).unwrap();
    let c = t.changed("a").unwrap();
    assert_eq!(ranges(&c), [(100, 101)]);
    assert_eq!(c.blocks, 1);
}

#[test]
fn take_mark_returns_and_resets_atomically() {
    let (mut t, mut p) = setup();
    p.write(A, EXTENT_WRITE, 0, 64);
    t.poll(&mut p, Instant::now()).unwrap();
    let taken = t.take_mark("a").unwrap();
    assert_eq!(taken.blocks, 8);
    assert_eq!(t.changed("a").unwrap().blocks, 0);
    p.write(A, EXTENT_WRITE, 64, 8);
    t.poll(&mut p, Instant::now()).unwrap();
    assert_eq!(ranges(&t.take_mark("a").unwrap()), [(8, 9)]);
    assert!(matches!(t.take_mark("zz"), Err(TrackError::UnknownVolume(n)) if n == "zz"));
}

#[test]
fn rates_come_from_kernel_counters() {
    let (mut t, mut p) = setup();
    let t0 = Instant::now();
    t.poll(&mut p, t0).unwrap();
    p.write(A, EXTENT_WRITE, 0, 2048); // 1 MiB
    t.poll(&mut p, t0 + Duration::from_secs(1)).unwrap();
    let s = t.status(10);
    let a = s.volumes.iter().find(|v| v.name == "a").unwrap();
    assert_eq!(a.written_bytes, 1 << 20);
    assert!(
        (a.write_bytes_per_s - (1 << 20) as f64).abs() < 1.0,
        "{}",
        a.write_bytes_per_s
    );
    assert_eq!(a.changed_bytes, 1 << 20);
    // Old samples leave the window: with no new writes the rate falls to zero.
    t.poll(&mut p, t0 + Duration::from_secs(20)).unwrap();
    t.poll(&mut p, t0 + Duration::from_secs(40)).unwrap();
    let s = t.status(10);
    assert_eq!(s.volumes[0].write_bytes_per_s, 0.0);
}

#[test]
fn writers_are_ranked_by_rate_then_bytes() {
    let (mut t, mut p) = setup();
    let t0 = Instant::now();
    p.syscall(10, "dd", 4096);
    p.syscall(20, "rsync", 1 << 20);
    t.poll(&mut p, t0).unwrap();
    for _ in 0..100 {
        p.syscall(10, "dd", 4096);
    }
    t.poll(&mut p, t0 + Duration::from_secs(1)).unwrap();
    let s = t.status(1);
    assert_eq!(s.writers.len(), 1);
    assert_eq!((s.writers[0].pid, s.writers[0].comm.as_str()), (10, "dd"));
    assert_eq!(s.writers[0].calls, 101);
}

#[test]
fn writers_the_kernel_map_evicted_are_forgotten() {
    let (mut t, mut p) = setup();
    let t0 = Instant::now();
    p.syscall(10, "dd", 4096);
    p.syscall(20, "rsync", 1 << 20);
    t.poll(&mut p, t0).unwrap();
    assert_eq!(t.status(10).writers.len(), 2);
    p.state.lock().unwrap().writers.remove(&20);
    t.poll(&mut p, t0 + Duration::from_secs(1)).unwrap();
    let s = t.status(10);
    assert_eq!(s.writers.iter().map(|w| w.pid).collect::<Vec<_>>(), [10]);
}

#[test]
fn dropped_extents_mark_the_sets_incomplete() {
    let (mut t, mut p) = setup();
    t.poll(&mut p, Instant::now()).unwrap();
    assert!(!t.changed("a").unwrap().incomplete);
    p.state.lock().unwrap().counters[vfsdr_common::counter::DROPPED as usize] = 3;
    t.poll(&mut p, Instant::now()).unwrap();
    assert!(t.changed("a").unwrap().incomplete);
    assert_eq!(t.status(1).probes.dropped, 3);
}

#[test]
fn unwatch_forgets_the_volume_and_its_extents() {
    let (mut t, mut p) = setup();
    t.unwatch(&mut p, "a").unwrap();
    p.write(A, EXTENT_WRITE, 0, 8);
    p.write(B, EXTENT_WRITE, 0, 8);
    t.poll(&mut p, Instant::now()).unwrap();
    assert!(t.changed("a").is_err());
    assert_eq!(t.changed("b").unwrap().blocks, 1);
    assert_eq!(t.volume_names().collect::<Vec<_>>(), ["b"]);
}

#[test]
fn a_failing_watch_leaves_no_volume_behind() {
    let (mut t, mut p) = setup();
    p.state.lock().unwrap().fail_watch = true;
    let e = t.watch(&mut p, "c", DevId::new(8, 0)).unwrap_err();
    assert!(e.to_string().starts_with("volume c:"), "{e}");
    assert_eq!(t.volume_names().count(), 2);
}
