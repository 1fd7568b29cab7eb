//! The fake's simulated disk: physical blocks with their content and reference counts, and the
//! files mapping their 4 KiB blocks onto them.
use std::collections::{BTreeMap, BTreeSet};

use super::B;

/// Physical block numbers start here, so no physical address is 0.
const FIRST_PHYSICAL: u64 = 1 << 20;

/// Where a file's block is: a physical block, written or only allocated (unwritten, reading as
/// zeros).
#[derive(Clone, Copy, Debug)]
pub(super) struct Slot {
    pub(super) physical: u64,
    pub(super) unwritten: bool,
}

/// A file: its size and its allocated blocks (by index).
#[derive(Clone, Debug, Default)]
pub(super) struct FakeFile {
    pub(super) size: u64,
    pub(super) blocks: BTreeMap<u64, Slot>,
}

/// Content and reference count of each physical block in use; freed blocks are handed out
/// again, lowest first.
#[derive(Debug, Default)]
pub(super) struct Disk {
    pub(super) blocks: BTreeMap<u64, (u32, Box<[u8; B]>)>,
    free: BTreeSet<u64>,
    next: u64,
}

impl Disk {
    pub(super) fn alloc(&mut self, content: Box<[u8; B]>) -> u64 {
        let p = self.free.pop_first().unwrap_or_else(|| {
            self.next += 1;
            FIRST_PHYSICAL + self.next - 1
        });
        self.blocks.insert(p, (1, content));
        p
    }
    pub(super) fn share(&mut self, p: u64) {
        if let Some(b) = self.blocks.get_mut(&p) {
            b.0 += 1;
        }
    }
    pub(super) fn release(&mut self, p: u64) {
        if let Some(b) = self.blocks.get_mut(&p) {
            b.0 -= 1;
            if b.0 == 0 {
                self.blocks.remove(&p);
                self.free.insert(p);
            }
        }
    }
    pub(super) fn refs(&self, p: u64) -> u32 {
        self.blocks.get(&p).map_or(0, |b| b.0)
    }
    pub(super) fn content(&self, s: Slot) -> Box<[u8; B]> {
        match self.blocks.get(&s.physical) {
            Some((_, c)) if !s.unwritten => c.clone(),
            _ => Box::new([0; B]),
        }
    }
}
