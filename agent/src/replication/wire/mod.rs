//! The data protocol of a replication cycle: binary frames over a data connection
//! ([`crate::peer::PeerClient::open_data`]), or over anything that reads and writes.
//!
//! The control messages of the peer link are JSON, one request and one reply at a time; the blocks
//! of a cycle are tens of gigabytes at worst, so they travel here, streamed without waiting for
//! replies, in frames that cost 16 bytes of header and are checked before anything is written.
//!
//! # Frame layout (all integers big-endian)
//!
//! ```text
//! offset size  field
//!  0     4     magic      0x56465344, "VFSD"
//!  4     1     kind       see below
//!  5     1     flags      0 (anything else is refused: a later version's feature)
//!  6     2     reserved   0 (same)
//!  8     4     len        payload length, at most MAX_PAYLOAD (8 MiB + 64)
//! 12     4     crc32      CRC-32 (IEEE) of bytes 0..12 and of the payload
//! 16     len   payload
//! ```
//!
//! | kind | frame | direction | payload |
//! |---|---|---|---|
//! | 0x01 | `Begin` | sender -> receiver | JSON `{vfs, cycle, epoch, base, volumes: [{name, size}], point}` |
//! | 0x02 | `Data` | sender -> receiver | volume u16, offset u64, len u32 (decoded), codec u8, encoded bytes |
//! | 0x03 | `Zero` | sender -> receiver | volume u16, offset u64, len u64 |
//! | 0x04 | `VolumeEnd` | sender -> receiver | volume u16, blocks u64, digest [32] |
//! | 0x05 | `Commit` | sender -> receiver | cycle u64 |
//! | 0x81 | `Committed` | receiver -> sender | cycle u64, snapshot u64 |
//! | 0x82 | `Refused` | receiver -> sender | reason, UTF-8 |
//! | 0x83 | `PoolFull` | receiver -> sender | JSON `{pool, needs, free}` ([`PoolFull`]) |
//! | 0x84 | `Resume` | receiver -> sender | cycle u64, count u16, count x offset u64 |
//! | 0x85 | `BaseMissing` | receiver -> sender | JSON `{base, latest}` ([`BaseMissing`]) |
//!
//! Codec bytes: 0 none, 1 zstd (level 1), 2 lz4 (block format); see [`super::codec`]. A `Data`
//! frame decodes to at most [`MAX_DATA`] (8 MiB) bytes. `volume` is the index of the volume in
//! `Begin`'s list.
//!
//! # A cycle
//!
//! `Begin`; the receiver answers `Resume` (or `Refused`) once it is ready to write; then for each
//! volume its `Data` and `Zero` frames and a `VolumeEnd`, then `Commit`; the receiver answers
//! `Committed` once the snapshot is safe, or `Refused` (or `PoolFull`) at any point (and closes). The order is
//! the replication engine's to enforce; this module checks each frame on its own.
//!
//! `Resume` lists, per volume of `Begin`, the offset below which the receiver already holds the
//! data of this very point (`Begin::point`) durably, from an interrupted full copy: the sender
//! skips what lies below it. All zeros: nothing to skip (always so for a delta). The receiver
//! may also answer `Begin` with `Committed` at once: it committed this very point already (the
//! sender did not get that answer), and nothing more is sent.
//!
//! `PoolFull` is a refusal of its own kind: the receiver's pool has no room for the cycle (checked
//! before anything is written, or met as ENOSPC while applying); the sender pauses and retries.
//! `Begin`'s `write_bytes` per volume (the bytes of its `Data` frames) lets the receiver check its
//! room first; a sender that leaves it out is assumed to rewrite the whole volume.
//!
//! `BaseMissing` answers a `Begin` whose delta applies to a snapshot the receiver does not hold as
//! its latest (removed by hand, or a catalog started anew); nothing is touched, and the sender
//! starts a full copy (a resync) in its place.
//!
//! `VolumeEnd` carries the number of `Data` and `Zero` frames sent for the volume (`blocks`) and a
//! SHA-256 ([`VolumeDigest`]) over, for each of them in order: a tag byte (`D` or `Z`), the offset
//! (u64), the length (u64), and for `D` the decoded bytes. [`FrameWriter`] computes both, and
//! [`FrameReader`] recomputes them from what it decoded and refuses a `VolumeEnd` that does not
//! match ([`WireError::DigestMismatch`]): a lost, repeated or reordered frame, or a codec bug, is
//! found before the receiver commits.
//!
//! # What the reader checks
//!
//! Everything it can without knowing the volumes: magic, kind, flags, the declared length (before
//! allocating anything: a payload is read into a buffer that grows with what arrives), the
//! checksum, the codec, that a payload decodes to exactly its declared length (never decoding
//! more than that), that offset + length does not overflow, and the volume digests. Whether a
//! frame lies inside its volume is [`check_bounds`]' job, with the receiver's own volume sizes.
//! Every error ends the connection; none is retried here. The errors name the frame and the
//! numbers but not the peer or VFS: the replication engine logs them with those.
//!
//! Both sides use one stream for both directions: split it with [`tokio::io::split`] and put a
//! [`FrameWriter`] on one half and a [`FrameReader`] on the other. Neither sets timeouts; wrap
//! the calls in [`tokio::time::timeout`].
mod read;
mod write;

use ring::digest;
use serde::{Deserialize, Serialize};

pub use read::{FrameReader, check_bounds};
pub use write::FrameWriter;

use super::codec::{Codec, CodecError};

/// "VFSD", the first four bytes of every frame.
pub const MAGIC: u32 = u32::from_be_bytes(*b"VFSD");
/// Bytes of a frame header.
pub const HEADER_LEN: usize = 16;
/// Most bytes one `Data` frame decodes to: 8 MiB.
pub const MAX_DATA: usize = 8 << 20;
/// Largest payload accepted or sent: 8 MiB of data and room for the `Data` frame's own fields.
pub const MAX_PAYLOAD: usize = MAX_DATA + 64;

const BEGIN: u8 = 0x01;
const DATA: u8 = 0x02;
const ZERO: u8 = 0x03;
const VOLUME_END: u8 = 0x04;
const COMMIT: u8 = 0x05;
const COMMITTED: u8 = 0x81;
const REFUSED: u8 = 0x82;
const POOL_FULL: u8 = 0x83;
const RESUME: u8 = 0x84;
const BASE_MISSING: u8 = 0x85;

/// Fixed fields of a `Data` payload: volume, offset, len, codec.
const DATA_FIELDS: usize = 2 + 8 + 4 + 1;
/// Longest `Refused` reason sent; longer ones are cut.
const MAX_REASON: usize = 4096;

/// One volume of a cycle: its name and size in bytes, as the sender has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub name: String,
    pub size: u64,
    /// Bytes of `Data` the cycle writes into this volume (`None`: unknown, up to `size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_bytes: Option<u64>,
}

/// Why a receiver has no room for a cycle: the free bytes of its pool (less its configured
/// reserve) against what the cycle needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolFull {
    /// The receiver's pool directory.
    pub pool: String,
    pub needs: u64,
    pub free: u64,
}

/// Why a receiver cannot apply a delta: the snapshot it applies to is not its latest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseMissing {
    /// The snapshot the delta applies to.
    pub base: u64,
    /// The receiver's latest snapshot, if any.
    pub latest: Option<u64>,
}

/// What a cycle is: `base` is the snapshot the delta applies to (`None` for a full copy).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Begin {
    pub vfs: String,
    pub cycle: u64,
    pub epoch: u64,
    pub base: Option<u64>,
    pub volumes: Vec<VolumeInfo>,
    /// The identity of the point in time the cycle ships (its clones at the sender): an
    /// interrupted full copy resumes only into the same point. `None` never resumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<u64>,
}

/// One frame, as [`FrameReader::next`] returns it (`Data` decoded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Begin(Begin),
    /// `data` at `offset` of volume `volume`; `codec` is how it travelled.
    Data {
        volume: u16,
        offset: u64,
        codec: Codec,
        data: Vec<u8>,
    },
    /// `len` bytes of zeros at `offset` (a range the sender found unallocated).
    Zero {
        volume: u16,
        offset: u64,
        len: u64,
    },
    VolumeEnd {
        volume: u16,
        blocks: u64,
        digest: [u8; 32],
    },
    Commit {
        cycle: u64,
    },
    Committed {
        cycle: u64,
        snapshot: u64,
    },
    Refused {
        reason: String,
    },
    PoolFull(PoolFull),
    BaseMissing(BaseMissing),
    /// Per volume of `Begin`, the offset the sender starts at (see the module docs).
    Resume {
        cycle: u64,
        offsets: Vec<u64>,
    },
}

impl Frame {
    /// The frame's name, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Begin(_) => "begin",
            Frame::Data { .. } => "data",
            Frame::Zero { .. } => "zero",
            Frame::VolumeEnd { .. } => "volume_end",
            Frame::Commit { .. } => "commit",
            Frame::Committed { .. } => "committed",
            Frame::Refused { .. } => "refused",
            Frame::PoolFull(_) => "pool_full",
            Frame::BaseMissing(_) => "base_missing",
            Frame::Resume { .. } => "resume",
        }
    }
}

/// The name of a frame kind byte; `None` for a byte no kind has.
fn kind_name(kind: u8) -> Option<&'static str> {
    Some(match kind {
        BEGIN => "begin",
        DATA => "data",
        ZERO => "zero",
        VOLUME_END => "volume_end",
        COMMIT => "commit",
        COMMITTED => "committed",
        REFUSED => "refused",
        POOL_FULL => "pool_full",
        RESUME => "resume",
        BASE_MISSING => "base_missing",
        _ => return None,
    })
}

/// What is wrong with a data connection's frames. The connection is closed after any of these.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The other side closed the connection cleanly between frames.
    #[error("data connection closed")]
    Closed,
    #[error("truncated frame: {part} ended after {got} of {expected} bytes")]
    Truncated {
        part: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("not a data frame: magic {found:#010x}, expected {MAGIC:#010x} (\"VFSD\")")]
    BadMagic { found: u32 },
    #[error(
        "{kind} frame: checksum {computed:#010x} of what arrived, {declared:#010x} declared: corrupted in transit"
    )]
    BadChecksum {
        kind: &'static str,
        declared: u32,
        computed: u32,
    },
    #[error("unknown frame kind {kind:#04x}")]
    UnknownKind { kind: u8 },
    #[error(
        "{kind} frame with flags {flags:#04x} and reserved {reserved:#06x}: this version knows none"
    )]
    UnknownFlags {
        kind: &'static str,
        flags: u8,
        reserved: u16,
    },
    #[error("{what} of {len} bytes refused: larger than the {max} byte limit")]
    TooLarge {
        what: &'static str,
        len: u64,
        max: usize,
    },
    #[error("{kind} frame: bad payload: {reason}")]
    BadPayload { kind: &'static str, reason: String },
    #[error("data frame: unknown codec {codec} (known: 0 none, 1 zstd, 2 lz4)")]
    BadCodec { codec: u8 },
    #[error(
        "data frame at offset {offset} of volume #{volume}: {codec} payload does not decode: {source}"
    )]
    Decompress {
        volume: u16,
        offset: u64,
        codec: Codec,
        source: CodecError,
    },
    #[error(
        "data frame at offset {offset} of volume #{volume}: {codec} payload decodes to {got} bytes, {declared} declared"
    )]
    LengthMismatch {
        volume: u16,
        offset: u64,
        codec: Codec,
        declared: usize,
        got: usize,
    },
    #[error("{kind} frame for volume #{volume}: offset {offset} + length {len} overflows 64 bits")]
    Overflow {
        kind: &'static str,
        volume: u16,
        offset: u64,
        len: u64,
    },
    #[error("{kind} frame for volume {volume:?} (#{index}): bytes {offset}..{} are outside the volume's {size} bytes",
        *offset as u128 + *len as u128)]
    OutOfBounds {
        kind: &'static str,
        volume: String,
        index: u16,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error("{kind} frame for volume #{volume}: the cycle has {count} volumes (#0..#{})",
        count.saturating_sub(1))]
    UnknownVolume {
        kind: &'static str,
        volume: u16,
        count: usize,
    },
    #[error(
        "volume #{volume}: the sender sent {sent_blocks} frames with digest {}, {received_blocks} arrived with digest {}: frames were lost, repeated or corrupted",
        hex(sent),
        hex(received)
    )]
    DigestMismatch {
        volume: u16,
        sent_blocks: u64,
        sent: [u8; 32],
        received_blocks: u64,
        received: [u8; 32],
    },
    #[error("{kind} frame: bad JSON: {source}")]
    Json {
        kind: &'static str,
        source: serde_json::Error,
    },
    #[error("data connection: {0}")]
    Io(#[from] std::io::Error),
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of what was sent for (or received in) one volume; see the module docs.
#[derive(Clone)]
pub struct VolumeDigest {
    context: digest::Context,
    blocks: u64,
}

impl Default for VolumeDigest {
    fn default() -> Self {
        VolumeDigest {
            context: digest::Context::new(&digest::SHA256),
            blocks: 0,
        }
    }
}

impl VolumeDigest {
    pub fn new() -> VolumeDigest {
        VolumeDigest::default()
    }

    /// Adds a `Data` frame.
    pub fn data(&mut self, offset: u64, data: &[u8]) {
        self.range(b'D', offset, data.len() as u64);
        self.context.update(data);
    }

    /// Adds a `Zero` frame.
    pub fn zero(&mut self, offset: u64, len: u64) {
        self.range(b'Z', offset, len);
    }

    fn range(&mut self, tag: u8, offset: u64, len: u64) {
        let mut head = [0u8; 17];
        head[0] = tag;
        head[1..9].copy_from_slice(&offset.to_be_bytes());
        head[9..].copy_from_slice(&len.to_be_bytes());
        self.context.update(&head);
        self.blocks += 1;
    }

    /// Frames added so far.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The frame count and the digest.
    pub fn finish(self) -> (u64, [u8; 32]) {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.context.finish().as_ref());
        (self.blocks, out)
    }
}

/// Bytes and frames that went through a writer or reader.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WireStats {
    pub frames: u64,
    /// Decoded bytes of `Data` frames.
    pub data_bytes: u64,
    /// Bytes on the wire: headers and payloads.
    pub wire_bytes: u64,
}

/// Writes frames; compresses `Data` with its codec and paces everything with its throttle.
fn checksum(head: &[u8], payload: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(head);
    crc.update(payload);
    crc.finalize()
}

fn checked_end(kind: &'static str, volume: u16, offset: u64, len: u64) -> Result<u64, WireError> {
    offset.checked_add(len).ok_or(WireError::Overflow {
        kind,
        volume,
        offset,
        len,
    })
}

#[cfg(test)]
mod tests;
