//! Syscall-level write tracking: who is writing. `write`, `pwrite64`, `writev`, `pwritev`,
//! `pwritev2` are counted per process (tgid) in a per-CPU LRU map, no event per call.
//!
//! The `syscalls/sys_enter_*` records have a fixed layout: the arguments are `unsigned long`
//! at offset 16 + 8 * index.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use vfsdr_common::{WriterStats, counter};

use crate::maps::{WRITERS, count};

const ARG0: usize = 16;
/// iovecs summed per vectored call; longer vectors are counted by their first entries.
const MAX_IOV: u64 = 16;

#[inline(always)]
fn arg(ctx: &TracePointContext, index: usize) -> u64 {
    // SAFETY: syscall enter records always carry six argument slots.
    unsafe { ctx.read_at::<u64>(ARG0 + 8 * index) }.unwrap_or(0)
}

#[inline(always)]
fn record(bytes: u64) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(stats) = WRITERS.get_ptr_mut(tgid) {
        // SAFETY: per-CPU value, written only by this CPU.
        let stats = unsafe { &mut *stats };
        stats.calls += 1;
        stats.bytes += bytes;
        return;
    }
    let stats = WriterStats {
        calls: 1,
        bytes,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    if WRITERS.insert(tgid, stats, 0).is_err() {
        count(counter::WRITERS_FULL, 1);
    }
}

/// Sum of `iov_len` of the first entries of a user iovec array.
#[inline(always)]
fn iov_bytes(vec: u64, vlen: u64) -> u64 {
    let mut total = 0u64;
    let mut i = 0u64;
    while i < MAX_IOV {
        if i >= vlen {
            break;
        }
        // struct iovec { void *iov_base; size_t iov_len; }
        let len_ptr = (vec + i * 16 + 8) as *const u64;
        total += unsafe { bpf_probe_read_user(len_ptr) }.unwrap_or(0);
        i += 1;
    }
    total
}

#[tracepoint]
pub fn sys_enter_write(ctx: TracePointContext) -> u32 {
    record(arg(&ctx, 2));
    0
}

#[tracepoint]
pub fn sys_enter_pwrite64(ctx: TracePointContext) -> u32 {
    record(arg(&ctx, 2));
    0
}

#[tracepoint]
pub fn sys_enter_writev(ctx: TracePointContext) -> u32 {
    record(iov_bytes(arg(&ctx, 1), arg(&ctx, 2)));
    0
}

#[tracepoint]
pub fn sys_enter_pwritev(ctx: TracePointContext) -> u32 {
    record(iov_bytes(arg(&ctx, 1), arg(&ctx, 2)));
    0
}

#[tracepoint]
pub fn sys_enter_pwritev2(ctx: TracePointContext) -> u32 {
    record(iov_bytes(arg(&ctx, 1), arg(&ctx, 2)));
    0
}
