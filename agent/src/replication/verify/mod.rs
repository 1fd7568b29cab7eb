//! `vfsdr verify`: compares the DR site's snapshot of the last acknowledged cycle with the
//! clones it was made from, which the active site keeps until the next cycle.
//!
//! Both sites hash the same byte ranges of each volume in fixed chunks ([`CHUNK`], 4 MiB;
//! larger for volumes of more than [`MAX_CHUNKS`] chunks), SHA-256 per chunk, holes read as
//! zeros (a chunk without data is not read: its digest is that of zeros). Chunks that differ
//! are hashed again at 4 KiB ([`FINE`]) on both sides, so a mismatch is reported as the exact
//! 4 KiB ranges that differ (for the first [`REFINE_CHUNKS`] differing chunks).
//!
//! Files are only read, through [`ReadOnly`]: [`ReadOnlyFile`] opens them `O_RDONLY` (a
//! snapshot is never opened for writing); [`ViaImages`] reads through the `Images` seam (the
//! fakes). The DR site's side is [`Remote`], a peer request in the agent.
use std::time::Instant;

use ring::digest;
use serde::{Deserialize, Serialize};

use super::{fsops::FsError, gap::ByteRange};

/// Default chunk of the comparison.
pub const CHUNK: u64 = 4 << 20;
/// Most chunks hashed per request (the chunk grows for larger volumes).
pub const MAX_CHUNKS: u64 = 1 << 16;
/// Granularity at which differing chunks are located.
pub const FINE: u64 = 4096;
/// How many differing chunks are located at [`FINE`] granularity.
pub const REFINE_CHUNKS: usize = 4;
/// How many differing ranges a mismatch lists.
pub const FIRST_RANGES: usize = 8;

/// SHA-256 of each `chunk` of `[offset, offset + len)` of a file (the last one may be shorter).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digests {
    /// The file's size.
    pub size: u64,
    pub offset: u64,
    pub len: u64,
    pub chunk: u64,
    /// Hex SHA-256 of each chunk.
    pub digests: Vec<String>,
    /// Bytes actually read (chunks without data are not).
    pub hashed_bytes: u64,
    pub elapsed_ms: u64,
    /// The DR site's snapshot id these come from (none at the active site).
    #[serde(default)]
    pub snapshot: Option<u64>,
}

/// The chunk for a volume of `size` bytes: [`CHUNK`], doubled until at most [`MAX_CHUNKS`].
pub fn chunk_for(size: u64) -> u64 {
    let mut chunk = CHUNK;
    while size.div_ceil(chunk) > MAX_CHUNKS {
        chunk *= 2;
    }
    chunk
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hashes `[offset, offset + len)` of `src` (cut at its size) in `chunk`s.
pub fn digest_range(
    src: &mut dyn ReadOnly,
    offset: u64,
    len: u64,
    chunk: u64,
) -> Result<Digests, FsError> {
    let started = Instant::now();
    let size = src.size()?;
    let end = offset.saturating_add(len).min(size);
    let data = src.data_ranges()?;
    let mut out = Vec::new();
    let mut hashed = 0;
    let mut zero_digest: Option<(u64, String)> = None;
    let mut buf = Vec::new();
    let mut next_data = 0; // index of the first data range that may overlap
    let mut at = offset.min(end);
    while at < end {
        let n = chunk.min(end - at);
        while next_data < data.len() && data[next_data].0 + data[next_data].1 <= at {
            next_data += 1;
        }
        let has_data = data.get(next_data).is_some_and(|&(d, _)| d < at + n);
        if has_data {
            buf.resize(n as usize, 0);
            src.read_at(at, &mut buf)?;
            out.push(hex(digest::digest(&digest::SHA256, &buf).as_ref()));
            hashed += n;
        } else {
            if zero_digest.as_ref().is_none_or(|(l, _)| *l != n) {
                let zeros = vec![0u8; n as usize];
                zero_digest = Some((n, hex(digest::digest(&digest::SHA256, &zeros).as_ref())));
            }
            out.push(
                zero_digest
                    .as_ref()
                    .map(|(_, d)| d.clone())
                    .unwrap_or_default(),
            );
        }
        at += n;
    }
    Ok(Digests {
        size,
        offset,
        len: end.saturating_sub(offset),
        chunk,
        digests: out,
        hashed_bytes: hashed,
        elapsed_ms: started.elapsed().as_millis() as u64,
        snapshot: None,
    })
}

/// The byte ranges (merged) of the chunks whose digests differ; `a` and `b` cover the same
/// range in the same chunks.
pub fn differing(a: &Digests, b: &Digests) -> Vec<ByteRange> {
    let end = a.offset + a.len;
    let mut out: Vec<ByteRange> = Vec::new();
    let n = a.digests.len().max(b.digests.len());
    for i in 0..n {
        if a.digests.get(i) == b.digests.get(i) {
            continue;
        }
        let offset = a.offset + i as u64 * a.chunk;
        let len = a.chunk.min(end.saturating_sub(offset));
        match out.last_mut() {
            Some(r) if r.offset + r.len == offset => r.len += len,
            _ => out.push(ByteRange { offset, len }),
        }
    }
    out
}

/// A DR site's digests of the snapshot of the verified cycle.
pub trait Remote {
    /// Digests of `volume` over `[offset, offset + len)` in `chunk`s; the error says why not.
    fn digests(
        &mut self,
        volume: &str,
        offset: u64,
        len: u64,
        chunk: u64,
    ) -> Result<Digests, String>;
}

/// The verdict of one volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum VerifyResult {
    Match,
    /// `first_ranges`: the first differing ranges, at 4 KiB where located (see the module).
    Mismatch {
        differing_chunks: u64,
        first_ranges: Vec<ByteRange>,
    },
    /// Could not be compared: the clone or the snapshot is missing, unreadable, or differs in size.
    Unverified {
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeVerify {
    pub volume: String,
    pub size: u64,
    pub chunk: u64,
    pub verdict: VerifyResult,
    /// Bytes read at the active site and at the DR site.
    pub hashed_bytes_active: u64,
    pub hashed_bytes_dr: u64,
    pub duration_ms: u64,
}

/// `vfsdr verify`'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub vfs: String,
    /// The DR site.
    pub peer: String,
    pub cycle: u64,
    /// The DR site's snapshot of that cycle, when it answered.
    pub snapshot: Option<u64>,
    pub volumes: Vec<VolumeVerify>,
    pub duration_ms: u64,
}

impl VerifyReport {
    pub fn all_match(&self) -> bool {
        self.volumes
            .iter()
            .all(|v| v.verdict == VerifyResult::Match)
    }
    pub fn any_mismatch(&self) -> bool {
        self.volumes
            .iter()
            .any(|v| matches!(v.verdict, VerifyResult::Mismatch { .. }))
    }
}

fn unverified(volume: &str, size: u64, reason: String) -> VolumeVerify {
    VolumeVerify {
        volume: volume.to_owned(),
        size,
        chunk: 0,
        verdict: VerifyResult::Unverified { reason },
        hashed_bytes_active: 0,
        hashed_bytes_dr: 0,
        duration_ms: 0,
    }
}

/// Compares one volume: the local clone (hashed on a thread of its own) with the remote
/// snapshot (hashed at the same time), then locates differing chunks at 4 KiB.
pub fn verify_volume(
    volume: &str,
    local: &mut dyn ReadOnly,
    remote: &mut dyn Remote,
) -> (VolumeVerify, Option<u64>) {
    let started = Instant::now();
    let size = match local.size() {
        Ok(s) => s,
        Err(e) => return (unverified(volume, 0, format!("active site: {e}")), None),
    };
    let chunk = chunk_for(size);
    let (mine, theirs) = std::thread::scope(|s| {
        let mine = s.spawn(|| digest_range(local, 0, size, chunk));
        let theirs = remote.digests(volume, 0, size, chunk);
        (mine.join(), theirs)
    });
    let mine = match mine {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => return (unverified(volume, size, format!("active site: {e}")), None),
        Err(_) => {
            return (
                unverified(
                    volume,
                    size,
                    "active site: the hashing thread failed".into(),
                ),
                None,
            );
        }
    };
    let theirs = match theirs {
        Ok(d) => d,
        Err(e) => return (unverified(volume, size, e), None),
    };
    let snapshot = theirs.snapshot;
    let mut v = VolumeVerify {
        volume: volume.to_owned(),
        size,
        chunk,
        verdict: VerifyResult::Match,
        hashed_bytes_active: mine.hashed_bytes,
        hashed_bytes_dr: theirs.hashed_bytes,
        duration_ms: 0,
    };
    if theirs.size != size {
        v.verdict = VerifyResult::Unverified {
            reason: format!(
                "the DR snapshot image has {} bytes, the active clone {size}",
                theirs.size
            ),
        };
    } else {
        let coarse = differing(&mine, &theirs);
        if !coarse.is_empty() {
            v.verdict = mismatch(volume, local, remote, &coarse, chunk, &mut v);
        }
    }
    v.duration_ms = started.elapsed().as_millis() as u64;
    (v, snapshot)
}

/// Locates the first differing chunks at [`FINE`] granularity.
fn mismatch(
    volume: &str,
    local: &mut dyn ReadOnly,
    remote: &mut dyn Remote,
    coarse: &[ByteRange],
    chunk: u64,
    v: &mut VolumeVerify,
) -> VerifyResult {
    let differing_chunks = coarse.iter().map(|r| r.len.div_ceil(chunk)).sum();
    let mut first: Vec<ByteRange> = Vec::new();
    let chunks = coarse.iter().flat_map(|r| {
        (0..r.len.div_ceil(chunk))
            .map(move |i| (r.offset + i * chunk, chunk.min(r.len - i * chunk)))
    });
    for (i, (offset, len)) in chunks.enumerate() {
        if first.len() >= FIRST_RANGES {
            break;
        }
        if i >= REFINE_CHUNKS {
            first.push(ByteRange { offset, len });
            continue;
        }
        let fine = digest_range(local, offset, len, FINE).map_err(|e| e.to_string());
        match (fine, remote.digests(volume, offset, len, FINE)) {
            (Ok(a), Ok(b)) => {
                v.hashed_bytes_active += a.hashed_bytes;
                v.hashed_bytes_dr += b.hashed_bytes;
                first.extend(differing(&a, &b));
            }
            // Not located further: the chunk itself is the range.
            _ => first.push(ByteRange { offset, len }),
        }
    }
    first.truncate(FIRST_RANGES);
    VerifyResult::Mismatch {
        differing_chunks,
        first_ranges: first,
    }
}

mod read;
mod serve;

pub use read::{ReadOnly, ReadOnlyFile, ViaImages};
pub use serve::{DigestError, DigestRequest, Opener, serve_digests};

#[cfg(test)]
mod tests;
