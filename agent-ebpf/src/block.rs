//! Block-level write tracking: `block/block_bio_queue`, filtered in the kernel to the watched
//! devices, merging the contiguous bios of each CPU into changed extents.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use vfsdr_common::{EXTENT_DISCARD, EXTENT_WRITE, counter};

use crate::maps::{BLOCK_LAYOUT, PENDING, WATCHED, count, submit};

#[tracepoint]
pub fn block_bio_queue(ctx: TracePointContext) -> u32 {
    let _ = track(&ctx);
    0
}

/// The operation character of `rwbs`: after an optional leading `F` (preflush) comes
/// `W` write, `D` discard (`DE` secure erase), `R` read, `F` flush, `N` other (write zeroes).
#[inline(always)]
fn kind_of(rwbs: &[u8; 8]) -> Option<u32> {
    let op = if rwbs[0] == b'F' && matches!(rwbs[1], b'W' | b'D' | b'R' | b'N') {
        rwbs[1]
    } else {
        rwbs[0]
    };
    match op {
        b'W' => Some(EXTENT_WRITE),
        // Anything that is neither a read nor a flush and carries sectors may change them.
        b'D' | b'N' => Some(EXTENT_DISCARD),
        _ => None,
    }
}

#[inline(always)]
fn track(ctx: &TracePointContext) -> Result<(), i32> {
    let layout = BLOCK_LAYOUT.get(0).ok_or(0)?;
    if layout.ready == 0 {
        return Ok(());
    }
    // SAFETY: offsets come from this tracepoint's format file; reads are probe reads.
    let dev: u32 = unsafe { ctx.read_at(layout.dev as usize)? };
    let Some(volume) = WATCHED.get_ptr_mut(dev) else {
        return Ok(());
    };
    let nr: u32 = unsafe { ctx.read_at(layout.nr_sector as usize)? };
    if nr == 0 {
        return Ok(());
    }
    let rwbs: [u8; 8] = unsafe { ctx.read_at(layout.rwbs as usize)? };
    let Some(kind) = kind_of(&rwbs) else {
        return Ok(());
    };
    let sector: u64 = unsafe { ctx.read_at(layout.sector as usize)? };
    let nr = nr as u64;

    // SAFETY: per-CPU map values; only this CPU writes them while the program runs.
    let volume = unsafe { &mut *volume };
    volume.bios += 1;
    if kind == EXTENT_WRITE {
        volume.write_bytes += nr * 512;
    } else {
        volume.discard_bytes += nr * 512;
    }
    count(counter::BIOS, 1);

    let p = PENDING.get_ptr_mut(0).ok_or(0)?;
    let p = unsafe { &mut *p };
    if p.nr_sectors != 0 && p.dev == dev && p.kind == kind {
        let end = p.sector + p.nr_sectors;
        if sector == end {
            p.nr_sectors += nr;
            p.bios += 1;
            return Ok(());
        }
        if sector >= p.sector && sector + nr <= end {
            p.bios += 1;
            return Ok(());
        }
    }
    if p.nr_sectors != 0 {
        submit(p);
    }
    // The length is written last: a reader racing with this update sees the old extent's
    // length with the new start at worst, which only over-reports blocks.
    p.dev = dev;
    p.kind = kind;
    p.sector = sector;
    p.bios = 1;
    p.nr_sectors = nr;
    Ok(())
}
