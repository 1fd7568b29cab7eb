//! [`FrameReader`]: frames from a stream, every field checked before it is trusted.
use std::{collections::HashMap, io::ErrorKind};

use tokio::io::{AsyncRead, AsyncReadExt as _};

use super::*;
use crate::replication::codec::Decompressor;

/// Reads and checks frames; see the module docs for what it checks.
pub struct FrameReader<R> {
    inner: R,
    pub(super) payload: Vec<u8>,
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
            POOL_FULL => {
                let full: PoolFull =
                    serde_json::from_slice(p.bytes).map_err(|source| WireError::Json {
                        kind: "pool_full",
                        source,
                    })?;
                Ok(Frame::PoolFull(full))
            }
            BASE_MISSING => {
                let missing: BaseMissing =
                    serde_json::from_slice(p.bytes).map_err(|source| WireError::Json {
                        kind: "base_missing",
                        source,
                    })?;
                Ok(Frame::BaseMissing(missing))
            }
            RESUME => {
                p.at_least(10)?;
                let (cycle, count) = (p.u64(0), usize::from(p.u16(8)));
                p.exactly(10 + 8 * count)?;
                let offsets = (0..count).map(|i| p.u64(10 + 8 * i)).collect();
                Ok(Frame::Resume { cycle, offsets })
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
