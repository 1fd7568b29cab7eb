//! vfsdr's eBPF programs. Built only for the bpf target (see agent/build.rs).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod block;
#[cfg(target_arch = "bpf")]
mod syscalls;

#[cfg(target_arch = "bpf")]
mod maps {
    use aya_ebpf::{
        bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
        macros::map,
        maps::{Array, LruPerCpuHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    };
    use vfsdr_common::{
        BlockLayout, EXTENTS_RING_BYTES, EXTENTS_WAKEUP_BYTES, Extent, VolumeCounters, WRITERS_MAX,
        WriterSlot, WriterStats, counter,
    };

    /// Watched block devices (`MAJOR << 20 | MINOR`) and their per-CPU counters.
    #[map]
    pub static WATCHED: PerCpuHashMap<u32, VolumeCounters> =
        PerCpuHashMap::with_max_entries(256, 0);
    /// Field offsets of the block tracepoint record, filled in by the agent.
    #[map]
    pub static BLOCK_LAYOUT: Array<BlockLayout> = Array::with_max_entries(1, 0);
    /// The extent each CPU is still growing; the agent reads these slots at every drain.
    #[map]
    pub static PENDING: PerCpuArray<Extent> = PerCpuArray::with_max_entries(1, 0);
    /// Finished extents, delivered in batches (no wakeup per record).
    #[map]
    pub static EXTENTS: RingBuf = RingBuf::with_byte_size(EXTENTS_RING_BYTES, 0);
    #[map]
    pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::LEN, 0);
    /// Write syscalls per process (tgid); least recently used processes make room for new ones.
    #[map]
    pub static WRITERS: LruPerCpuHashMap<u32, WriterStats> =
        LruPerCpuHashMap::with_max_entries(WRITERS_MAX, 0);
    /// The last writer of each CPU and its counts not yet in `WRITERS`.
    #[map]
    pub static LAST_WRITER: PerCpuArray<WriterSlot> = PerCpuArray::with_max_entries(1, 0);

    #[inline(always)]
    pub fn count(index: u32, n: u64) {
        if let Some(c) = COUNTERS.get_ptr_mut(index) {
            // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
            unsafe { *c += n };
        }
    }

    /// Submits a finished extent. Userspace is woken only once the ring is past its fill
    /// threshold; otherwise it picks the records up at its next poll tick.
    #[inline(always)]
    pub fn submit(extent: &Extent) {
        let flags = if EXTENTS.query(BPF_RB_AVAIL_DATA as u64) >= EXTENTS_WAKEUP_BYTES {
            count(counter::WAKEUPS, 1);
            BPF_RB_FORCE_WAKEUP
        } else {
            BPF_RB_NO_WAKEUP
        };
        match EXTENTS.output::<Extent>(extent, flags as u64) {
            Ok(()) => count(counter::EXTENTS, 1),
            Err(_) => count(counter::DROPPED, 1),
        }
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("vfsdr-ebpf holds eBPF programs; it is built for the bpf target by agent/build.rs");
    std::process::exit(2);
}
