//! [`FrameWriter`]: frames onto a stream, compressed, throttled, with per-volume digests.
use std::collections::HashMap;

use tokio::io::{AsyncWrite, AsyncWriteExt as _};

use super::*;
use crate::replication::{codec::Compressor, throttle::Throttle};

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

    /// Checks `data` (at most [`MAX_DATA`] bytes, inside u64 offsets), counts it into its
    /// volume's digest and starts its `Data` frame up to the codec byte.
    fn start_data(&mut self, volume: u16, offset: u64, data: &[u8]) -> Result<(), WireError> {
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
        Ok(())
    }

    /// Sends `data` (at most [`MAX_DATA`] bytes) for `offset` of volume `volume`; returns the
    /// codec it travelled with ([`Codec::None`] when compressing did not make it smaller).
    pub async fn data(
        &mut self,
        volume: u16,
        offset: u64,
        data: &[u8],
    ) -> Result<Codec, WireError> {
        self.start_data(volume, offset, data)?;
        let codec_at = self.buf.len();
        self.buf.push(0);
        let codec = self.compressor.compress(self.codec, data, &mut self.buf);
        self.buf[codec_at] = codec.to_byte();
        self.send_buf(DATA).await?;
        self.stats.data_bytes += data.len() as u64;
        Ok(codec)
    }

    /// Sends `data` for `offset` of volume `volume` as `payload`, already encoded with `codec`
    /// (by a [`Compressor`] elsewhere; [`Codec::None`]: `payload` is `data`). The same frame
    /// and digest as [`FrameWriter::data`].
    pub async fn data_encoded(
        &mut self,
        volume: u16,
        offset: u64,
        data: &[u8],
        codec: Codec,
        payload: &[u8],
    ) -> Result<(), WireError> {
        self.start_data(volume, offset, data)?;
        self.buf.push(codec.to_byte());
        self.buf.extend_from_slice(payload);
        self.send_buf(DATA).await?;
        self.stats.data_bytes += data.len() as u64;
        Ok(())
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

    /// The receiver has no room for the cycle in its pool; flushes.
    pub async fn pool_full(&mut self, full: &PoolFull) -> Result<(), WireError> {
        self.start();
        serde_json::to_writer(&mut self.buf, full).map_err(|source| WireError::Json {
            kind: "pool_full",
            source,
        })?;
        self.send_buf(POOL_FULL).await?;
        self.flush().await
    }

    /// The receiver does not hold the delta's base as its latest snapshot; flushes.
    pub async fn base_missing(&mut self, missing: &BaseMissing) -> Result<(), WireError> {
        self.start();
        serde_json::to_writer(&mut self.buf, missing).map_err(|source| WireError::Json {
            kind: "base_missing",
            source,
        })?;
        self.send_buf(BASE_MISSING).await?;
        self.flush().await
    }

    /// The receiver's answer to `Begin`: where the sender starts in each volume; flushes.
    pub async fn resume(&mut self, cycle: u64, offsets: &[u64]) -> Result<(), WireError> {
        let count = u16::try_from(offsets.len()).map_err(|_| WireError::TooLarge {
            what: "resume offset list",
            len: offsets.len() as u64,
            max: usize::from(u16::MAX),
        })?;
        self.start();
        self.buf.extend_from_slice(&cycle.to_be_bytes());
        self.buf.extend_from_slice(&count.to_be_bytes());
        for o in offsets {
            self.buf.extend_from_slice(&o.to_be_bytes());
        }
        self.send_buf(RESUME).await?;
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
            Frame::PoolFull(full) => self.pool_full(full).await,
            Frame::BaseMissing(missing) => self.base_missing(missing).await,
            Frame::Resume { cycle, offsets } => self.resume(*cycle, offsets).await,
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
