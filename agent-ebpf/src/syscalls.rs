//! Syscall-level write tracking: who is writing. `write`, `pwrite64`, `writev`, `pwritev` and
//! `pwritev2` are counted per process (tgid) in per-CPU maps, no event per call.
//!
//! One BTF tracepoint on the raw `sys_enter` hook, filtered by syscall number, rather than the
//! five `syscalls/sys_enter_*` trace events: those build a perf record for every call before the
//! program runs, which measured as the larger part of the cost on a 4 KiB write loop
//! (see bench/results/writes.md). The numbers of the five syscalls differ per architecture, so
//! the agent writes them into [`SYSCALL_NRS`] at load time.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::btf_tracepoint,
    programs::{BtfTracePointContext, ProbeContext},
};
use vfsdr_common::{SyscallNrs, WriterStats, counter};

use crate::maps::{LAST_WRITER, WRITERS, count};

/// Filled in by the agent (`override_global`); all `u64::MAX` (matching nothing) otherwise.
#[unsafe(no_mangle)]
static SYSCALL_NRS: SyscallNrs = SyscallNrs {
    write: u64::MAX,
    pwrite64: u64::MAX,
    writev: u64::MAX,
    pwritev: u64::MAX,
    pwritev2: u64::MAX,
};

/// iovecs summed per vectored call; longer vectors are counted by their first entries.
const MAX_IOV: u64 = 16;

/// Counts a write of the current process: in this CPU's last-writer slot when it wrote last
/// here (the common case, no hash lookup), else the slot's counts move to `WRITERS` first.
#[inline(always)]
fn record(bytes: u64) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(slot) = LAST_WRITER.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
    let slot = unsafe { &mut *slot };
    if slot.tgid == tgid && slot.stats.calls != 0 {
        slot.stats.calls += 1;
        slot.stats.bytes += bytes;
        return;
    }
    if slot.stats.calls != 0 {
        flush(slot.tgid, &slot.stats);
    }
    slot.tgid = tgid;
    slot.stats = WriterStats {
        calls: 1,
        bytes,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
}

/// Adds a slot's counts to the process's entry in `WRITERS`.
#[inline(always)]
fn flush(tgid: u32, slot: &WriterStats) {
    if let Some(stats) = WRITERS.get_ptr_mut(tgid) {
        // SAFETY: per-CPU value, written only by this CPU.
        let stats = unsafe { &mut *stats };
        stats.calls += slot.calls;
        stats.bytes += slot.bytes;
        stats.comm = slot.comm;
        return;
    }
    if WRITERS.insert(tgid, slot, 0).is_err() {
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

/// `sys_enter(struct pt_regs *regs, long id)`: runs on every syscall entry, so everything but
/// the five write syscalls returns at the first comparisons.
#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter(ctx: BtfTracePointContext) -> i32 {
    let id: u64 = ctx.arg(1);
    // SAFETY: a read-only global the verifier sees as constant.
    let nrs = unsafe { core::ptr::read_volatile(&SYSCALL_NRS) };
    let plain = id == nrs.write || id == nrs.pwrite64;
    if !plain && id != nrs.writev && id != nrs.pwritev && id != nrs.pwritev2 {
        return 0;
    }
    // The syscall's own arguments, from the user registers it was entered with.
    let regs = ProbeContext::new(ctx.arg(0));
    let bytes = if plain {
        regs.arg::<u64>(2).unwrap_or(0)
    } else {
        iov_bytes(
            regs.arg::<u64>(1).unwrap_or(0),
            regs.arg::<u64>(2).unwrap_or(0),
        )
    };
    record(bytes);
    0
}
