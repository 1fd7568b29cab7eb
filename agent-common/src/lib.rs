//! Types shared by the vfsdr eBPF programs (kernel side) and the agent (user side).
//!
//! Every type is `#[repr(C)]`, has no padding and no `bool` (flags are `u32`), so the same
//! bytes mean the same thing on both sides. `aya::Pod` is implemented only with the `user`
//! feature, which the eBPF crate never enables.
#![no_std]

/// Size of one tracked block, in bytes. Changed-block sets are kept at this granularity.
pub const BLOCK_SIZE: u64 = 4096;
/// Size of a sector as used by the block layer tracepoints.
pub const SECTOR_SIZE: u64 = 512;

/// Names of the maps and programs in the eBPF object; the agent looks them up by these.
pub mod names {
    pub const WATCHED: &str = "WATCHED";
    pub const BLOCK_LAYOUT: &str = "BLOCK_LAYOUT";
    pub const PENDING: &str = "PENDING";
    pub const EXTENTS: &str = "EXTENTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const WRITERS: &str = "WRITERS";
    pub const LAST_WRITER: &str = "LAST_WRITER";
    pub const BLOCK_PROGRAM: &str = "block_bio_queue";
    /// The write-syscall program, a BTF tracepoint on the raw `sys_enter` hook.
    pub const SYSCALL_PROGRAM: &str = "sys_enter";
    /// Its global holding the numbers of the write syscalls ([`super::SyscallNrs`]).
    pub const SYSCALL_NRS: &str = "SYSCALL_NRS";
}

/// Byte offsets of the fields the block program reads from the `block/block_bio_queue`
/// tracepoint record. They differ between tracepoints and kernels, so the agent reads them
/// from the tracepoint's `format` file and stores them in `BLOCK_LAYOUT[0]` before attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockLayout {
    /// Offset of `dev_t dev` (u32, `MAJOR << 20 | MINOR`).
    pub dev: u32,
    /// Offset of `sector_t sector` (u64).
    pub sector: u32,
    /// Offset of `unsigned int nr_sector` (u32).
    pub nr_sector: u32,
    /// Offset of `char rwbs[N]`.
    pub rwbs: u32,
    /// Non-zero once the agent has filled in the layout; the program ignores events before.
    pub ready: u32,
    pub _pad: u32,
}

/// Value of the per-CPU `WATCHED` map, keyed by kernel device number: which volume the device
/// is, and per-CPU counters of what the block program saw on it (summed by the agent for rates).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VolumeCounters {
    /// Volume id assigned by the agent.
    pub volume: u32,
    pub _pad: u32,
    /// Bytes written (write bios).
    pub write_bytes: u64,
    /// Bytes discarded, securely erased or zeroed.
    pub discard_bytes: u64,
    /// Bios that changed blocks.
    pub bios: u64,
}

/// What a changed extent did to the blocks it covers.
pub const EXTENT_WRITE: u32 = 1;
/// Discard, secure erase or write-zeroes: the blocks changed (to zeroes or to "unmapped").
pub const EXTENT_DISCARD: u32 = 2;

/// A run of changed sectors on one watched device, built in the kernel by merging the
/// contiguous bios one CPU queues, and delivered through the `EXTENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extent {
    /// Kernel device number, `MAJOR << 20 | MINOR`.
    pub dev: u32,
    /// `EXTENT_WRITE` or `EXTENT_DISCARD`.
    pub kind: u32,
    /// First sector (512 bytes).
    pub sector: u64,
    /// Number of sectors; 0 marks an empty `PENDING` slot.
    pub nr_sectors: u64,
    /// Number of bios merged into this extent.
    pub bios: u64,
}

/// Indexes into the per-CPU `COUNTERS` array.
pub mod counter {
    /// Bios on watched devices that changed blocks.
    pub const BIOS: u32 = 0;
    /// Extents submitted to the ring buffer.
    pub const EXTENTS: u32 = 1;
    /// Extents lost because the ring buffer was full: the tracked set is then incomplete.
    pub const DROPPED: u32 = 2;
    /// Forced wakeups of userspace (ring buffer past its fill threshold).
    pub const WAKEUPS: u32 = 3;
    /// Write syscalls not recorded because the writers map was full.
    pub const WRITERS_FULL: u32 = 4;
    pub const LEN: u32 = 5;
}

/// Ring buffer size in bytes (power of two, multiple of the page size).
pub const EXTENTS_RING_BYTES: u32 = 1 << 22;
/// Fill level past which the kernel wakes userspace; below it records wait for the poll tick.
pub const EXTENTS_WAKEUP_BYTES: u64 = 1 << 20;
/// Capacity of the per-process writers map.
pub const WRITERS_MAX: u32 = 8192;

/// Per-process write-syscall counters: value of the per-CPU `WRITERS` map keyed by tgid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    pub calls: u64,
    pub bytes: u64,
    /// `comm` of the last thread that wrote, NUL padded.
    pub comm: [u8; 16],
}

/// The process that wrote last on a CPU, with the calls and bytes not yet added to `WRITERS`
/// (value of the per-CPU `LAST_WRITER` slot). A loop of writes by one process only touches
/// this slot; the counts move to `WRITERS` when another process writes on that CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterSlot {
    pub tgid: u32,
    pub _pad: u32,
    /// `calls == 0`: the slot is empty.
    pub stats: WriterStats,
}

/// Numbers of the write syscalls on the running architecture, set by the agent at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallNrs {
    pub write: u64,
    pub pwrite64: u64,
    pub writev: u64,
    pub pwritev: u64,
    pub pwritev2: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all these types are `#[repr(C)]`, `Copy`, made of integers only, without padding.
    unsafe impl aya::Pod for super::BlockLayout {}
    unsafe impl aya::Pod for super::Extent {}
    unsafe impl aya::Pod for super::VolumeCounters {}
    unsafe impl aya::Pod for super::WriterStats {}
    unsafe impl aya::Pod for super::SyscallNrs {}
    unsafe impl aya::Pod for super::WriterSlot {}
}
