use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use super::{Change, ChangeKind, all_data, changed, total};
use crate::replication::{
    fake_fs::{BLOCK, FakeImages},
    fsops::{Extent, Images as _, flags},
};

const K: u64 = 4096;

/// An extent in 4 KiB blocks.
fn e(logical: u64, physical: u64, blocks: u64) -> Extent {
    ef(logical, physical, blocks, 0)
}

fn ef(logical: u64, physical: u64, blocks: u64, flags: u32) -> Extent {
    Extent {
        logical: logical * K,
        physical: physical * K,
        length: blocks * K,
        flags,
    }
}

fn data(a: u64, b: u64) -> Change {
    Change {
        offset: a * K,
        len: (b - a) * K,
        kind: ChangeKind::Data,
    }
}

fn zero(a: u64, b: u64) -> Change {
    Change {
        offset: a * K,
        len: (b - a) * K,
        kind: ChangeKind::Zero,
    }
}

const SIZE: u64 = 64 * K;

fn diff(prev: &[Extent], next: &[Extent]) -> Vec<Change> {
    changed(prev, next, SIZE, K)
}

#[test]
fn identical_and_empty_lists_have_no_changes() {
    let list = [e(0, 100, 8), e(10, 300, 4)];
    assert_eq!(diff(&list, &list), []);
    assert_eq!(diff(&[], &[]), []);
}

#[test]
fn everything_is_data_against_nothing() {
    assert_eq!(
        diff(&[], &[e(0, 100, 4), e(4, 900, 4), e(20, 50, 2)]),
        [data(0, 8), data(20, 22)]
    );
}

#[test]
fn new_extent_in_a_hole_is_data_and_a_removed_one_is_zero() {
    let prev = [e(0, 100, 8), e(20, 200, 4)];
    let next = [e(0, 100, 8), e(10, 500, 2)];
    assert_eq!(diff(&prev, &next), [data(10, 12), zero(20, 24)]);
}

#[test]
fn a_reflinked_extent_partially_overwritten_splits_into_pieces() {
    let prev = [ef(0, 100, 16, flags::SHARED | flags::LAST)];
    let next = [
        ef(0, 100, 4, flags::SHARED),
        e(4, 700, 2),
        ef(6, 106, 10, flags::SHARED | flags::LAST),
    ];
    assert_eq!(diff(&prev, &next), [data(4, 6)]);
    // And back: the old pieces against a new single extent elsewhere in the middle.
    let next2 = [e(0, 100, 2), e(2, 800, 10), e(12, 112, 4)];
    assert_eq!(diff(&next, &next2), [data(2, 12)]);
}

#[test]
fn the_same_mapping_cut_differently_is_unchanged() {
    let whole = [e(0, 100, 16)];
    let cut = [e(0, 100, 3), e(3, 103, 5), e(8, 108, 8)];
    assert_eq!(diff(&whole, &cut), []);
    assert_eq!(diff(&cut, &whole), []);
}

#[test]
fn adjacent_extents_are_compared_byte_for_byte() {
    // Logically adjacent, physically apart; next maps both halves contiguously from P.
    let prev = [e(0, 100, 4), e(4, 500, 4)];
    let next = [e(0, 100, 8)];
    assert_eq!(diff(&prev, &next), [data(4, 8)]);
    // Same lengths, shifted physical location: all of it.
    assert_eq!(diff(&[e(0, 100, 8)], &[e(0, 101, 8)]), [data(0, 8)]);
}

#[test]
fn overlapping_extents_in_one_list_count_as_opaque() {
    let prev = [e(0, 100, 8)];
    let next = [e(0, 100, 8), e(4, 104, 8)];
    // [4, 8) is mapped twice (opaque), [8, 12) is new.
    assert_eq!(diff(&prev, &next), [data(4, 12)]);
}

#[test]
fn opaque_extents_are_always_data() {
    for flag in [
        flags::UNKNOWN,
        flags::DELALLOC | flags::UNKNOWN,
        flags::ENCODED,
        flags::DATA_ENCRYPTED,
        flags::NOT_ALIGNED,
        flags::DATA_INLINE | flags::NOT_ALIGNED,
        flags::DATA_TAIL,
    ] {
        let normal = [e(0, 100, 4)];
        let opaque = [ef(0, 100, 4, flag)];
        assert_eq!(
            diff(&normal, &opaque),
            [data(0, 4)],
            "flag {flag:#x} in next"
        );
        assert_eq!(
            diff(&opaque, &opaque),
            [data(0, 4)],
            "flag {flag:#x} in both"
        );
        assert_eq!(
            diff(&opaque, &normal),
            [data(0, 4)],
            "flag {flag:#x} in prev"
        );
        assert_eq!(
            diff(&opaque, &[]),
            [zero(0, 4)],
            "flag {flag:#x}, then a hole"
        );
    }
}

#[test]
fn unwritten_extents_read_as_zeros() {
    let u = |l, p, n| ef(l, p, n, flags::UNWRITTEN);
    // Written, then unwritten (at the same place or not): now zeros.
    assert_eq!(diff(&[e(0, 100, 4)], &[u(0, 100, 4)]), [zero(0, 4)]);
    assert_eq!(diff(&[e(0, 100, 4)], &[u(0, 200, 4)]), [zero(0, 4)]);
    // The same unwritten extent, or zeros before and after: unchanged.
    assert_eq!(diff(&[u(0, 100, 4)], &[u(0, 100, 4)]), []);
    assert_eq!(diff(&[u(0, 100, 4)], &[u(0, 300, 4)]), []);
    assert_eq!(diff(&[], &[u(0, 100, 4)]), []);
    assert_eq!(diff(&[u(0, 100, 4)], &[]), []);
    // Unwritten converted to written in place, or written elsewhere: data.
    assert_eq!(diff(&[u(0, 100, 4)], &[e(0, 100, 4)]), [data(0, 4)]);
    assert_eq!(
        diff(&[u(0, 100, 4)], &[e(0, 100, 1), u(1, 101, 3)]),
        [data(0, 1)]
    );
}

#[test]
fn bookkeeping_flags_do_not_count() {
    let prev = [ef(0, 100, 8, flags::SHARED | flags::MERGED)];
    let next = [ef(0, 100, 8, flags::LAST)];
    assert_eq!(diff(&prev, &next), []);
}

#[test]
fn input_order_and_empty_extents_do_not_matter() {
    let prev = [e(10, 200, 2), e(0, 100, 4), e(5, 900, 0)];
    let next = [e(10, 200, 2), e(0, 100, 2), e(30, 0, 0)];
    assert_eq!(diff(&prev, &next), [zero(2, 4)]);
}

#[test]
fn extents_beyond_the_size_are_ignored_and_the_tail_is_kept() {
    let size = 10 * K + 100;
    // A new extent covering the partial last block: data up to the size.
    assert_eq!(
        changed(&[], &[e(8, 100, 4), e(40, 300, 4)], size, K),
        [Change {
            offset: 8 * K,
            len: 2 * K + 100,
            kind: ChangeKind::Data
        }]
    );
    // Gone at the tail: the partial last block is punched whole.
    assert_eq!(
        changed(&[e(8, 100, 4)], &[e(8, 100, 2)], size, K),
        [Change {
            offset: 10 * K,
            len: 100,
            kind: ChangeKind::Zero
        }]
    );
}

#[test]
fn ranges_are_aligned_out_to_the_block() {
    let b = 16 * K; // 64 KiB blocks
    // One 4 KiB change: its whole 64 KiB block.
    let prev = [e(0, 100, 64)];
    let next = [e(0, 100, 20), e(20, 900, 1), e(21, 121, 43)];
    assert_eq!(changed(&prev, &next, 64 * K, b), [data(16, 32)]);
    // Two changes in neighbouring blocks merge.
    let next = [e(0, 100, 15), e(15, 900, 2), e(17, 117, 47)];
    assert_eq!(changed(&prev, &next, 64 * K, b), [data(0, 32)]);
}

#[test]
fn a_zero_range_shares_its_blocks_only_with_zeros() {
    let b = 16 * K;
    let prev = [e(0, 100, 64)];
    // Punched [20, 40): next still has data in [16, 20) and [40, 48), so blocks 16..32 and 32..48
    // are partly zero and partly unchanged data: copy them; nothing is whole zeros.
    let next = [e(0, 100, 20), e(40, 140, 24)];
    assert_eq!(changed(&prev, &next, 64 * K, b), [data(16, 48)]);
    // Punched [20, 60): block 32..48 is all zeros now; 16..32 and 48..64 are partial.
    let next = [e(0, 100, 20), e(60, 160, 4)];
    assert_eq!(
        changed(&prev, &next, 64 * K, b),
        [data(16, 32), zero(32, 48), data(48, 64)]
    );
    // Punched [20, 24) where the rest of the block was a hole already: punch the whole block.
    let prev = [e(0, 100, 16), e(20, 200, 4), e(48, 300, 16)];
    let next = [e(0, 100, 16), e(48, 300, 16)];
    assert_eq!(changed(&prev, &next, 64 * K, b), [zero(16, 32)]);
    // The same at 4 KiB blocks: exact.
    assert_eq!(changed(&prev, &next, 64 * K, K), [zero(20, 24)]);
}

#[test]
fn data_and_zero_alternate_sorted_and_merged() {
    let prev = [e(0, 100, 4), e(4, 200, 4), e(8, 300, 4), e(12, 400, 4)];
    let next = [e(0, 500, 4), e(4, 600, 4), e(12, 400, 4), e(16, 700, 4)];
    assert_eq!(diff(&prev, &next), [data(0, 8), zero(8, 12), data(16, 20)]);
}

#[test]
fn a_zero_block_size_counts_as_one_byte() {
    assert_eq!(changed(&[], &[e(0, 100, 1)], SIZE, 0), [data(0, 1)]);
}

#[test]
fn totals_count_data_and_zero_bytes() {
    assert_eq!(
        total(&[data(0, 8), zero(8, 12), data(16, 20)]),
        (12 * K, 4 * K)
    );
    assert_eq!(total(&[]), (0, 0));
}

#[test]
fn all_data_covers_the_allocated_ranges() {
    let ranges = [(0, 100), (K, K), (2 * K, 10), (20 * K, 100 * K)];
    assert_eq!(
        all_data(&ranges, 30 * K + 5, K),
        [
            data(0, 3),
            Change {
                offset: 20 * K,
                len: 10 * K + 5,
                kind: ChangeKind::Data
            }
        ]
    );
    assert_eq!(all_data(&ranges, 30 * K, 16 * K), [data(0, 30)]);
    assert_eq!(all_data(&[], 30 * K, K), []);
}

// --- against the fake: applying the changes to the previous clone gives the new one ---------

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let fill = self.below(4);
        (0..n)
            .map(|_| if fill == 0 { 0 } else { self.next() as u8 })
            .collect()
    }
}

fn apply(fs: &mut FakeImages, changes: &[Change], from: &Path, to: &Path) {
    for c in changes {
        match c.kind {
            ChangeKind::Data => {
                let mut buf = vec![0; c.len as usize];
                fs.read_at(from, c.offset, &mut buf).unwrap();
                fs.write_at(to, c.offset, &buf).unwrap();
            }
            ChangeKind::Zero => fs.punch(to, c.offset, c.len).unwrap(),
        }
    }
}

/// Random writes, punches, preallocations (and a clone made and dropped) on `image` of `size`
/// bytes; returns the 4 KiB blocks touched.
fn workload(rng: &mut Rng, fs: &mut FakeImages, image: &Path, size: u64) -> BTreeSet<u64> {
    let mut touched = BTreeSet::new();
    for _ in 0..1 + rng.below(30) {
        let offset = rng.below(size);
        let max = if rng.below(3) == 0 { 40 * K } else { 3 * K };
        let len = (1 + rng.below(max)).min(size - offset);
        match rng.below(10) {
            0..=5 => fs
                .write_user(image, offset, &rng.bytes(len as usize))
                .unwrap(),
            6..=7 => fs.punch(image, offset, len).unwrap(),
            8 => fs.preallocate(image, offset, len).unwrap(),
            _ => {
                let tmp = image.with_extension("tmp");
                fs.clone_file(image, &tmp).unwrap();
                fs.write_user(image, offset, &rng.bytes(len as usize))
                    .unwrap();
                fs.remove(&tmp).unwrap();
            }
        }
        touched.extend(offset / BLOCK..(offset + len).div_ceil(BLOCK));
    }
    touched
}

fn check_shape(changes: &[Change], size: u64, block: u64) {
    for w in changes.windows(2) {
        assert!(
            w[0].end() <= w[1].offset,
            "overlap or unsorted: {changes:?}"
        );
        assert!(
            w[0].end() < w[1].offset || w[0].kind != w[1].kind,
            "not merged: {changes:?}"
        );
    }
    for c in changes {
        assert!(c.len > 0 && c.end() <= size, "{c:?} outside {size}");
        assert!(c.offset % block == 0, "{c:?} not aligned to {block}");
        assert!(
            c.end() % block == 0 || c.end() == size,
            "{c:?} not aligned to {block}"
        );
    }
}

#[test]
fn applying_the_changes_to_the_first_clone_gives_the_second() {
    let dir = PathBuf::from("/pool");
    for seed in 0..300u64 {
        let mut rng = Rng(seed);
        let mut fs = FakeImages::new();
        fs.set_max_extent_blocks([None, Some(1), Some(3)][rng.below(3) as usize]);
        let size = (8 + rng.below(200)) * K + [0, 1 + rng.below(K - 1)][rng.below(2) as usize];
        let (image, c1, c2) = (dir.join("v.img"), dir.join("v.1"), dir.join("v.2"));
        fs.add_volume(&dir.join("mnt"), &image, size);
        workload(&mut rng, &mut fs, &image, size);
        fs.clone_file(&image, &c1).unwrap();
        let touched = workload(&mut rng, &mut fs, &image, size);
        fs.clone_file(&image, &c2).unwrap();
        let (prev, next) = (fs.extents(&c1).unwrap(), fs.extents(&c2).unwrap());
        for block in [K, 16 * K, 3 * K, 512] {
            let changes = changed(&prev, &next, size, block);
            check_shape(&changes, size, block);
            let replica = dir.join(format!("r{block}"));
            fs.clone_file(&c1, &replica).unwrap();
            apply(&mut fs, &changes, &c2, &replica);
            assert!(
                fs.content(&replica) == fs.content(&c2),
                "seed {seed}, block {block}: replica differs, changes {changes:?}"
            );
            if block == K {
                // Exact: nothing outside the blocks the workload touched.
                for c in &changes {
                    let blocks: BTreeSet<u64> = (c.offset / K..c.end().div_ceil(K)).collect();
                    assert!(
                        blocks.is_subset(&touched),
                        "seed {seed}: {c:?} was not touched"
                    );
                }
            }
        }
    }
}

#[test]
fn a_replica_follows_a_chain_of_clones() {
    let dir = PathBuf::from("/pool");
    for seed in 1000..1100u64 {
        let mut rng = Rng(seed);
        let mut fs = FakeImages::new();
        let size = (16 + rng.below(100)) * K;
        let (image, replica) = (dir.join("v.img"), dir.join("replica.img"));
        fs.add_volume(&dir.join("mnt"), &image, size);
        workload(&mut rng, &mut fs, &image, size);
        // Initial sync: the allocated ranges into a new sparse replica.
        let mut prev = dir.join("v.0");
        fs.clone_file(&image, &prev).unwrap();
        let initial = all_data(&fs.data_ranges(&prev).unwrap(), size, K);
        fs.create_sparse(&replica, size).unwrap();
        apply(&mut fs, &initial, &prev, &replica);
        assert!(
            fs.content(&replica) == fs.content(&prev),
            "seed {seed}: initial sync"
        );
        for cycle in 1..6 {
            workload(&mut rng, &mut fs, &image, size);
            let next = dir.join(format!("v.{cycle}"));
            fs.clone_file(&image, &next).unwrap();
            let changes = changed(
                &fs.extents(&prev).unwrap(),
                &fs.extents(&next).unwrap(),
                size,
                [K, 16 * K][rng.below(2) as usize],
            );
            apply(&mut fs, &changes, &next, &replica);
            assert!(
                fs.content(&replica) == fs.content(&next),
                "seed {seed}, cycle {cycle}"
            );
            // The old clone goes; its blocks are free for the next writes.
            fs.remove(&prev).unwrap();
            prev = next;
        }
    }
}
