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
//! | 0x01 | `Begin` | sender -> receiver | JSON `{vfs, cycle, epoch, base, volumes: [{name, size}]}` |
//! | 0x02 | `Data` | sender -> receiver | volume u16, offset u64, len u32 (decoded), codec u8, encoded bytes |
//! | 0x03 | `Zero` | sender -> receiver | volume u16, offset u64, len u64 |
//! | 0x04 | `VolumeEnd` | sender -> receiver | volume u16, blocks u64, digest [32] |
//! | 0x05 | `Commit` | sender -> receiver | cycle u64 |
//! | 0x81 | `Committed` | receiver -> sender | cycle u64, snapshot u64 |
//! | 0x82 | `Refused` | receiver -> sender | reason, UTF-8 |
//!
//! Codec bytes: 0 none, 1 zstd (level 1), 2 lz4 (block format); see [`super::codec`]. A `Data`
//! frame decodes to at most [`MAX_DATA`] (8 MiB) bytes. `volume` is the index of the volume in
//! `Begin`'s list.
//!
//! # A cycle
//!
//! `Begin`, then for each volume its `Data` and `Zero` frames and a `VolumeEnd`, then `Commit`; the
//! receiver answers `Committed` once the snapshot is safe, or `Refused` at any point (and closes).
//! The order is the replication engine's to enforce; this module checks each frame on its own.
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
use std::{collections::HashMap, io::ErrorKind};

use ring::digest;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::{
    codec::{Codec, CodecError, Compressor, Decompressor},
    throttle::Throttle,
};

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

/// Fixed fields of a `Data` payload: volume, offset, len, codec.
const DATA_FIELDS: usize = 2 + 8 + 4 + 1;
/// Longest `Refused` reason sent; longer ones are cut.
const MAX_REASON: usize = 4096;

/// One volume of a cycle: its name and size in bytes, as the sender has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub name: String,
    pub size: u64,
}

/// What a cycle is: `base` is the snapshot the delta applies to (`None` for a full copy).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Begin {
    pub vfs: String,
    pub cycle: u64,
    pub epoch: u64,
    pub base: Option<u64>,
    pub volumes: Vec<VolumeInfo>,
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
pub struct FrameWriter<W> {
    inner: W,
    codec: Codec,
    compressor: Compressor,
    throttle: Throttle,
    buf: Vec<u8>,
    digests: HashMap<u16, VolumeDigest>,
    stats: WireStats,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// A writer compressing with `codec` and sending at most `bytes_per_s` (unlimited if `None`).
    pub fn new(inner: W, codec: Codec, bytes_per_s: Option<u64>) -> FrameWriter<W> {
        FrameWriter {
            inner,
            codec,
            compressor: Compressor::new(),
            throttle: Throttle::new(bytes_per_s),
            buf: Vec::new(),
            digests: HashMap::new(),
            stats: WireStats::default(),
        }
    }

    /// Starts a cycle (and forgets the digests of a previous one).
    pub async fn begin(&mut self, begin: &Begin) -> Result<(), WireError> {
        self.digests.clear();
        self.start();
        serde_json::to_writer(&mut self.buf, begin).map_err(|source| WireError::Json {
            kind: "begin",
            source,
        })?;
        self.send_buf(BEGIN).await
    }

    /// Sends `data` (at most [`MAX_DATA`] bytes) for `offset` of volume `volume`; returns the
    /// codec it travelled with ([`Codec::None`] when compressing did not make it smaller).
    pub async fn data(
        &mut self,
        volume: u16,
        offset: u64,
        data: &[u8],
    ) -> Result<Codec, WireError> {
        if data.len() > MAX_DATA {
            return Err(WireError::TooLarge {
                what: "data block",
                len: data.len() as u64,
                max: MAX_DATA,
            });
        }
        checked_end("data", volume, offset, data.len() as u64)?;
        self.digests.entry(volume).or_default().data(offset, data);
        self.start();
        self.buf.extend_from_slice(&volume.to_be_bytes());
        self.buf.extend_from_slice(&offset.to_be_bytes());
        self.buf
            .extend_from_slice(&(data.len() as u32).to_be_bytes());
        let codec_at = self.buf.len();
        self.buf.push(0);
        let codec = self.compressor.compress(self.codec, data, &mut self.buf);
        self.buf[codec_at] = codec.to_byte();
        self.send_buf(DATA).await?;
        self.stats.data_bytes += data.len() as u64;
        Ok(codec)
    }

    /// Sends a range of zeros.
    pub async fn zero(&mut self, volume: u16, offset: u64, len: u64) -> Result<(), WireError> {
        checked_end("zero", volume, offset, len)?;
        self.digests.entry(volume).or_default().zero(offset, len);
        self.start();
        self.buf.extend_from_slice(&volume.to_be_bytes());
        self.buf.extend_from_slice(&offset.to_be_bytes());
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.send_buf(ZERO).await
    }

    /// Ends a volume with the count and digest of what was sent for it; returns them.
    pub async fn volume_end(&mut self, volume: u16) -> Result<(u64, [u8; 32]), WireError> {
        let (blocks, digest) = self.digests.remove(&volume).unwrap_or_default().finish();
        self.volume_end_raw(volume, blocks, digest).await?;
        Ok((blocks, digest))
    }

    async fn volume_end_raw(
        &mut self,
        volume: u16,
        blocks: u64,
        digest: [u8; 32],
    ) -> Result<(), WireError> {
        self.start();
        self.buf.extend_from_slice(&volume.to_be_bytes());
        self.buf.extend_from_slice(&blocks.to_be_bytes());
        self.buf.extend_from_slice(&digest);
        self.send_buf(VOLUME_END).await
    }

    /// Asks the receiver to commit the cycle, and flushes.
    pub async fn commit(&mut self, cycle: u64) -> Result<(), WireError> {
        self.start();
        self.buf.extend_from_slice(&cycle.to_be_bytes());
        self.send_buf(COMMIT).await?;
        self.flush().await
    }

    /// The receiver's answer to `Commit`; flushes.
    pub async fn committed(&mut self, cycle: u64, snapshot: u64) -> Result<(), WireError> {
        self.start();
        self.buf.extend_from_slice(&cycle.to_be_bytes());
        self.buf.extend_from_slice(&snapshot.to_be_bytes());
        self.send_buf(COMMITTED).await?;
        self.flush().await
    }

    /// The receiver refuses the cycle (cut to 4 KiB); flushes.
    pub async fn refused(&mut self, reason: &str) -> Result<(), WireError> {
        let mut end = reason.len().min(MAX_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        self.start();
        self.buf.extend_from_slice(&reason.as_bytes()[..end]);
        self.send_buf(REFUSED).await?;
        self.flush().await
    }

    /// Sends `frame` as it is. `Data` and `Zero` count towards their volume's digest as with
    /// [`FrameWriter::data`] (a `Data` frame's `codec` is ignored: the writer's is used);
    /// `VolumeEnd` is sent with the frame's own count and digest.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), WireError> {
        match frame {
            Frame::Begin(begin) => self.begin(begin).await,
            Frame::Data {
                volume,
                offset,
                data,
                ..
            } => self.data(*volume, *offset, data).await.map(drop),
            Frame::Zero {
                volume,
                offset,
                len,
            } => self.zero(*volume, *offset, *len).await,
            Frame::VolumeEnd {
                volume,
                blocks,
                digest,
            } => {
                self.digests.remove(volume);
                self.volume_end_raw(*volume, *blocks, *digest).await
            }
            Frame::Commit { cycle } => self.commit(*cycle).await,
            Frame::Committed { cycle, snapshot } => self.committed(*cycle, *snapshot).await,
            Frame::Refused { reason } => self.refused(reason).await,
        }
    }

    /// Flushes the stream.
    pub async fn flush(&mut self) -> Result<(), WireError> {
        Ok(self.inner.flush().await?)
    }

    /// What this writer sent so far.
    pub fn stats(&self) -> WireStats {
        self.stats
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    pub fn into_inner(self) -> W {
        self.inner
    }

    /// Starts a frame in `buf`: room for the header.
    fn start(&mut self) {
        self.buf.clear();
        self.buf.resize(HEADER_LEN, 0);
    }

    /// Fills in the header of the frame in `buf` and writes it, after the throttle allows.
    async fn send_buf(&mut self, kind: u8) -> Result<(), WireError> {
        let len = self.buf.len() - HEADER_LEN;
        if len > MAX_PAYLOAD {
            return Err(WireError::TooLarge {
                what: "payload",
                len: len as u64,
                max: MAX_PAYLOAD,
            });
        }
        self.buf[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        self.buf[4] = kind;
        self.buf[5] = 0;
        self.buf[6..8].copy_from_slice(&0u16.to_be_bytes());
        self.buf[8..12].copy_from_slice(&(len as u32).to_be_bytes());
        let crc = checksum(&self.buf[..12], &self.buf[HEADER_LEN..]);
        self.buf[12..16].copy_from_slice(&crc.to_be_bytes());
        self.throttle.take(self.buf.len() as u64).await;
        self.inner.write_all(&self.buf).await?;
        self.stats.frames += 1;
        self.stats.wire_bytes += self.buf.len() as u64;
        Ok(())
    }
}

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

/// Reads and checks frames; see the module docs for what it checks.
pub struct FrameReader<R> {
    inner: R,
    payload: Vec<u8>,
    decompressor: Decompressor,
    digests: HashMap<u16, VolumeDigest>,
    stats: WireStats,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> FrameReader<R> {
        FrameReader {
            inner,
            payload: Vec::new(),
            decompressor: Decompressor::new(),
            digests: HashMap::new(),
            stats: WireStats::default(),
        }
    }

    /// The next frame, checked. [`WireError::Closed`] when the other side closed the connection
    /// between frames.
    pub async fn next(&mut self) -> Result<Frame, WireError> {
        let mut header = [0u8; HEADER_LEN];
        let got = read_full(&mut self.inner, &mut header).await?;
        if got == 0 {
            return Err(WireError::Closed);
        }
        if got < HEADER_LEN {
            return Err(WireError::Truncated {
                part: "header",
                expected: HEADER_LEN,
                got,
            });
        }
        let magic = u32::from_be_bytes(header[0..4].try_into().expect("4 bytes"));
        if magic != MAGIC {
            return Err(WireError::BadMagic { found: magic });
        }
        let len = u32::from_be_bytes(header[8..12].try_into().expect("4 bytes")) as usize;
        if len > MAX_PAYLOAD {
            return Err(WireError::TooLarge {
                what: "payload",
                len: len as u64,
                max: MAX_PAYLOAD,
            });
        }
        // Grows with what arrives: a declared length costs nothing until its bytes are here.
        self.payload.clear();
        match (&mut self.inner)
            .take(len as u64)
            .read_to_end(&mut self.payload)
            .await
        {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {}
            Err(e) => return Err(e.into()),
        }
        if self.payload.len() < len {
            return Err(WireError::Truncated {
                part: "payload",
                expected: len,
                got: self.payload.len(),
            });
        }
        let (kind, flags) = (header[4], header[5]);
        let reserved = u16::from_be_bytes([header[6], header[7]]);
        let declared = u32::from_be_bytes(header[12..16].try_into().expect("4 bytes"));
        let computed = checksum(&header[..12], &self.payload);
        if computed != declared {
            return Err(WireError::BadChecksum {
                kind: kind_name(kind).unwrap_or("unknown"),
                declared,
                computed,
            });
        }
        let Some(name) = kind_name(kind) else {
            return Err(WireError::UnknownKind { kind });
        };
        if flags != 0 || reserved != 0 {
            return Err(WireError::UnknownFlags {
                kind: name,
                flags,
                reserved,
            });
        }
        let frame = self.parse(kind, name)?;
        self.stats.frames += 1;
        self.stats.wire_bytes += (HEADER_LEN + len) as u64;
        Ok(frame)
    }

    /// What this reader received so far.
    pub fn stats(&self) -> WireStats {
        self.stats
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    fn parse(&mut self, kind: u8, name: &'static str) -> Result<Frame, WireError> {
        let p = Payload {
            kind: name,
            bytes: &self.payload,
        };
        match kind {
            BEGIN => {
                let begin: Begin =
                    serde_json::from_slice(p.bytes).map_err(|source| WireError::Json {
                        kind: p.kind,
                        source,
                    })?;
                if begin.volumes.len() > usize::from(u16::MAX) + 1 {
                    return Err(p.bad(format!(
                        "{} volumes, at most {} can be addressed",
                        begin.volumes.len(),
                        usize::from(u16::MAX) + 1
                    )));
                }
                self.digests.clear();
                Ok(Frame::Begin(begin))
            }
            DATA => {
                p.at_least(DATA_FIELDS)?;
                let volume = p.u16(0);
                let offset = p.u64(2);
                let len = p.u32(10) as usize;
                if len > MAX_DATA {
                    return Err(WireError::TooLarge {
                        what: "data block",
                        len: len as u64,
                        max: MAX_DATA,
                    });
                }
                let codec = Codec::from_byte(p.bytes[14])
                    .ok_or(WireError::BadCodec { codec: p.bytes[14] })?;
                checked_end("data", volume, offset, len as u64)?;
                let mut data = Vec::new();
                self.decompressor
                    .decompress(codec, &p.bytes[DATA_FIELDS..], len, &mut data)
                    .map_err(|source| match source {
                        CodecError::Length { expected, got } => WireError::LengthMismatch {
                            volume,
                            offset,
                            codec,
                            declared: expected,
                            got,
                        },
                        source => WireError::Decompress {
                            volume,
                            offset,
                            codec,
                            source,
                        },
                    })?;
                self.digests.entry(volume).or_default().data(offset, &data);
                self.stats.data_bytes += data.len() as u64;
                Ok(Frame::Data {
                    volume,
                    offset,
                    codec,
                    data,
                })
            }
            ZERO => {
                p.exactly(18)?;
                let (volume, offset, len) = (p.u16(0), p.u64(2), p.u64(10));
                checked_end("zero", volume, offset, len)?;
                self.digests.entry(volume).or_default().zero(offset, len);
                Ok(Frame::Zero {
                    volume,
                    offset,
                    len,
                })
            }
            VOLUME_END => {
                p.exactly(42)?;
                let (volume, blocks) = (p.u16(0), p.u64(2));
                let digest: [u8; 32] = p.bytes[10..42].try_into().expect("32 bytes");
                let (received_blocks, received) =
                    self.digests.remove(&volume).unwrap_or_default().finish();
                if (received_blocks, received) != (blocks, digest) {
                    return Err(WireError::DigestMismatch {
                        volume,
                        sent_blocks: blocks,
                        sent: digest,
                        received_blocks,
                        received,
                    });
                }
                Ok(Frame::VolumeEnd {
                    volume,
                    blocks,
                    digest,
                })
            }
            COMMIT => {
                p.exactly(8)?;
                Ok(Frame::Commit { cycle: p.u64(0) })
            }
            COMMITTED => {
                p.exactly(16)?;
                Ok(Frame::Committed {
                    cycle: p.u64(0),
                    snapshot: p.u64(8),
                })
            }
            REFUSED => {
                let reason = std::str::from_utf8(p.bytes)
                    .map_err(|e| p.bad(format!("reason is not UTF-8: {e}")))?;
                Ok(Frame::Refused {
                    reason: reason.to_owned(),
                })
            }
            _ => Err(WireError::UnknownKind { kind }),
        }
    }
}

/// A payload being parsed; lengths are checked before the fields are read.
struct Payload<'a> {
    kind: &'static str,
    bytes: &'a [u8],
}

impl Payload<'_> {
    fn bad(&self, reason: String) -> WireError {
        WireError::BadPayload {
            kind: self.kind,
            reason,
        }
    }

    fn exactly(&self, len: usize) -> Result<(), WireError> {
        if self.bytes.len() != len {
            return Err(self.bad(format!("{} bytes, expected {len}", self.bytes.len())));
        }
        Ok(())
    }

    fn at_least(&self, len: usize) -> Result<(), WireError> {
        if self.bytes.len() < len {
            return Err(self.bad(format!(
                "{} bytes, expected at least {len}",
                self.bytes.len()
            )));
        }
        Ok(())
    }

    fn u16(&self, at: usize) -> u16 {
        u16::from_be_bytes(self.bytes[at..at + 2].try_into().expect("2 bytes"))
    }

    fn u32(&self, at: usize) -> u32 {
        u32::from_be_bytes(self.bytes[at..at + 4].try_into().expect("4 bytes"))
    }

    fn u64(&self, at: usize) -> u64 {
        u64::from_be_bytes(self.bytes[at..at + 8].try_into().expect("8 bytes"))
    }
}

/// Checks that a `Data`, `Zero` or `VolumeEnd` frame addresses one of `volumes` and, for `Data`
/// and `Zero`, lies inside it. Other frames pass.
pub fn check_bounds(frame: &Frame, volumes: &[VolumeInfo]) -> Result<(), WireError> {
    let (kind, index, range) = match frame {
        Frame::Data {
            volume,
            offset,
            data,
            ..
        } => ("data", *volume, Some((*offset, data.len() as u64))),
        Frame::Zero {
            volume,
            offset,
            len,
        } => ("zero", *volume, Some((*offset, *len))),
        Frame::VolumeEnd { volume, .. } => ("volume_end", *volume, None),
        _ => return Ok(()),
    };
    let info = volumes
        .get(usize::from(index))
        .ok_or(WireError::UnknownVolume {
            kind,
            volume: index,
            count: volumes.len(),
        })?;
    if let Some((offset, len)) = range {
        let inside = offset.checked_add(len).is_some_and(|end| end <= info.size);
        if !inside {
            return Err(WireError::OutOfBounds {
                kind,
                volume: info.name.clone(),
                index,
                offset,
                len,
                size: info.size,
            });
        }
    }
    Ok(())
}

/// Fills `buf` unless the stream ends first; returns how many bytes were read. A TLS stream
/// closed without `close_notify` ends like a plain one.
async fn read_full<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
) -> Result<usize, WireError> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]).await {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
