//! Tests of the data protocol: round trips over an in-memory duplex, and every bad input refused.
use std::time::Instant;

use tokio::io::{AsyncWriteExt as _, duplex};

use super::*;
use crate::replication::codec::tests::{half_compressible, noise};

const CODECS: [Codec; 3] = [Codec::None, Codec::Zstd, Codec::Lz4];

fn begin() -> Begin {
    Begin {
        vfs: "fs1".into(),
        cycle: 12,
        epoch: 3,
        base: Some(11),
        volumes: vec![
            VolumeInfo {
                name: "data".into(),
                size: 1 << 30,
                write_bytes: None,
            },
            VolumeInfo {
                name: "logs".into(),
                size: 1 << 20,
                write_bytes: None,
            },
        ],
        point: Some(0x1234_5678_9abc),
    }
}

/// A frame with a correct header and checksum around `payload`.
fn raw_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&MAGIC.to_be_bytes());
    frame.extend_from_slice(&[kind, 0, 0, 0]);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    let crc = checksum(&frame, payload);
    frame.extend_from_slice(&crc.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A `Data` payload declaring `len` decoded bytes, with `encoded` as its bytes.
fn data_payload(volume: u16, offset: u64, len: u32, codec: u8, encoded: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&volume.to_be_bytes());
    p.extend_from_slice(&offset.to_be_bytes());
    p.extend_from_slice(&len.to_be_bytes());
    p.push(codec);
    p.extend_from_slice(encoded);
    p
}

/// What a reader makes of `bytes` followed by the end of the stream.
async fn read_bytes(bytes: &[u8]) -> (Result<Frame, WireError>, FrameReader<&[u8]>) {
    let mut reader = FrameReader::new(bytes);
    (reader.next().await, reader)
}

/// The bytes a writer produces for `frames`.
async fn written(codec: Codec, frames: &[Frame]) -> Vec<u8> {
    let mut writer = FrameWriter::new(Vec::new(), codec, None);
    for frame in frames {
        writer.send(frame).await.unwrap();
    }
    writer.into_inner()
}

#[tokio::test]
async fn every_frame_kind_round_trips_with_every_codec() {
    for codec in CODECS {
        let (a, b) = duplex(64 << 10);
        let compressible = b"0123456789abcdef".repeat(4096);
        let random = noise(100_000, 5);
        let sender = tokio::spawn({
            let (compressible, random) = (compressible.clone(), random.clone());
            async move {
                let mut w = FrameWriter::new(a, codec, None);
                w.begin(&begin()).await.unwrap();
                w.resume(12, &[1 << 20, 0]).await.unwrap();
                assert_eq!(w.data(0, 4096, &compressible).await.unwrap(), codec);
                assert_eq!(w.data(0, 1 << 20, &random).await.unwrap(), Codec::None);
                w.data(1, 0, &[]).await.unwrap();
                w.zero(0, 1 << 29, 1 << 29).await.unwrap();
                let (blocks, _) = w.volume_end(0).await.unwrap();
                assert_eq!(blocks, 3);
                w.volume_end(1).await.unwrap();
                w.commit(12).await.unwrap();
                w.committed(12, 40).await.unwrap();
                w.refused("epoch 2 is older than 3 — refused")
                    .await
                    .unwrap();
                w.base_missing(&BaseMissing {
                    base: 7,
                    latest: Some(5),
                })
                .await
                .unwrap();
                w.stats()
            }
        });
        let mut r = FrameReader::new(b);
        assert_eq!(r.next().await.unwrap(), Frame::Begin(begin()));
        assert_eq!(
            r.next().await.unwrap(),
            Frame::Resume {
                cycle: 12,
                offsets: vec![1 << 20, 0]
            }
        );
        let frame = r.next().await.unwrap();
        assert!(
            matches!(&frame, Frame::Data { volume: 0, offset: 4096, codec: c, data }
                if *c == codec && *data == compressible),
            "{codec}"
        );
        assert_eq!(
            r.next().await.unwrap(),
            Frame::Data {
                volume: 0,
                offset: 1 << 20,
                codec: Codec::None,
                data: random.clone()
            }
        );
        assert_eq!(
            r.next().await.unwrap(),
            Frame::Data {
                volume: 1,
                offset: 0,
                codec: Codec::None,
                data: vec![]
            }
        );
        assert_eq!(
            r.next().await.unwrap(),
            Frame::Zero {
                volume: 0,
                offset: 1 << 29,
                len: 1 << 29
            }
        );
        let mut digest = VolumeDigest::new();
        digest.data(4096, &compressible);
        digest.data(1 << 20, &random);
        digest.zero(1 << 29, 1 << 29);
        let (blocks, digest) = digest.finish();
        assert_eq!(
            r.next().await.unwrap(),
            Frame::VolumeEnd {
                volume: 0,
                blocks,
                digest
            }
        );
        assert!(matches!(
            r.next().await.unwrap(),
            Frame::VolumeEnd {
                volume: 1,
                blocks: 1,
                ..
            }
        ));
        assert_eq!(r.next().await.unwrap(), Frame::Commit { cycle: 12 });
        assert_eq!(
            r.next().await.unwrap(),
            Frame::Committed {
                cycle: 12,
                snapshot: 40
            }
        );
        assert_eq!(
            r.next().await.unwrap(),
            Frame::Refused {
                reason: "epoch 2 is older than 3 — refused".into()
            }
        );
        assert_eq!(
            r.next().await.unwrap(),
            Frame::BaseMissing(BaseMissing {
                base: 7,
                latest: Some(5)
            })
        );
        let sent = sender.await.unwrap();
        assert!(matches!(r.next().await, Err(WireError::Closed)));
        assert_eq!(sent.frames, 12);
        assert_eq!(r.stats(), sent, "{codec}");
        let raw = compressible.len() + random.len();
        assert_eq!(sent.data_bytes, raw as u64);
        if codec != Codec::None {
            assert!(sent.wire_bytes < raw as u64, "{codec}: {sent:?}");
        }
    }
}

#[tokio::test]
async fn a_frame_cut_short_is_truncated() {
    let frame = written(
        Codec::None,
        &[Frame::Data {
            volume: 0,
            offset: 0,
            codec: Codec::None,
            data: vec![7; 1000],
        }],
    )
    .await;
    let (result, _) = read_bytes(&frame[..10]).await;
    assert!(
        matches!(
            result,
            Err(WireError::Truncated {
                part: "header",
                expected: 16,
                got: 10
            })
        ),
        "{result:?}"
    );
    let (result, _) = read_bytes(&frame[..500]).await;
    let error = result.unwrap_err();
    assert_eq!(
        error.to_string(),
        "truncated frame: payload ended after 484 of 1015 bytes"
    );
    let (result, _) = read_bytes(&[]).await;
    assert!(matches!(result, Err(WireError::Closed)));
}

#[tokio::test]
async fn bad_magic_is_refused() {
    let mut frame = written(Codec::None, &[Frame::Commit { cycle: 1 }]).await;
    frame[..4].copy_from_slice(b"HTTP");
    let error = read_bytes(&frame).await.0.unwrap_err();
    assert!(
        matches!(error, WireError::BadMagic { found } if found == u32::from_be_bytes(*b"HTTP"))
    );
    assert_eq!(
        error.to_string(),
        "not a data frame: magic 0x48545450, expected 0x56465344 (\"VFSD\")"
    );
}

#[tokio::test]
async fn a_corrupted_byte_fails_the_checksum() {
    let data = half_compressible(200_000, 3);
    for codec in CODECS {
        let frame = written(
            codec,
            &[Frame::Data {
                volume: 0,
                offset: 0,
                codec,
                data: data.clone(),
            }],
        )
        .await;
        for at in [5, 9, 17, frame.len() / 2, frame.len() - 1] {
            let mut bad = frame.clone();
            bad[at] ^= 0x10;
            let error = read_bytes(&bad).await.0.unwrap_err();
            // A flipped length bit makes the frame look longer than what follows (truncated) or
            // shorter (checksum over less); a flipped flag or payload bit fails the checksum.
            assert!(
                matches!(
                    error,
                    WireError::BadChecksum { .. } | WireError::Truncated { .. }
                ),
                "{codec}, byte {at}: {error}"
            );
            if at != 9 {
                assert!(
                    matches!(error, WireError::BadChecksum { kind: "data", .. }),
                    "{codec}, byte {at}: {error}"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_declared_length_of_1_gib_is_refused_before_allocating() {
    let mut frame = raw_frame(DATA, &[]);
    frame[8..12].copy_from_slice(&(1u32 << 30).to_be_bytes());
    let (result, reader) = read_bytes(&frame).await;
    let error = result.unwrap_err();
    assert!(
        matches!(error, WireError::TooLarge { what: "payload", len, max: MAX_PAYLOAD } if len == 1 << 30),
        "{error}"
    );
    assert_eq!(reader.payload.capacity(), 0, "nothing allocated");
    // A Data frame declaring more than 8 MiB of decoded bytes is refused before decoding.
    let frame = raw_frame(DATA, &data_payload(0, 0, u32::MAX, 1, b"x"));
    let (result, _) = read_bytes(&frame).await;
    assert!(
        matches!(
            result,
            Err(WireError::TooLarge {
                what: "data block",
                ..
            })
        ),
        "{result:?}"
    );
    // The writer refuses to send more than that.
    let mut writer = FrameWriter::new(Vec::new(), Codec::None, None);
    let error = writer.data(0, 0, &vec![0; MAX_DATA + 1]).await.unwrap_err();
    assert!(matches!(error, WireError::TooLarge { .. }), "{error}");
}

#[tokio::test]
async fn a_payload_decoding_to_another_length_is_refused() {
    let data = b"hello hello hello hello hello hello hello".repeat(100);
    for codec in CODECS {
        let mut encoded = Vec::new();
        let used = crate::replication::codec::compress(codec, &data, &mut encoded);
        assert_eq!(used, codec);
        let declared = data.len() as u32 + 10;
        let frame = raw_frame(
            DATA,
            &data_payload(1, 0, declared, used.to_byte(), &encoded),
        );
        let error = read_bytes(&frame).await.0.unwrap_err();
        assert!(
            matches!(error, WireError::LengthMismatch { volume: 1, declared: d, got, .. }
                if d == declared as usize && got == data.len()),
            "{codec}: {error}"
        );
    }
}

#[tokio::test]
async fn a_zstd_bomb_fails_without_expanding() {
    // 256 MiB of zeros compress to a few KiB of zstd; the frame declares 64 KiB.
    let zeros = vec![0u8; 256 << 20];
    let bomb = zstd::bulk::compress(&zeros, 19).unwrap();
    drop(zeros);
    assert!(bomb.len() < 64 << 10, "{}", bomb.len());
    let frame = raw_frame(DATA, &data_payload(0, 0, 64 << 10, 1, &bomb));
    let error = read_bytes(&frame).await.0.unwrap_err();
    assert!(
        matches!(
            error,
            WireError::Decompress {
                codec: Codec::Zstd,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("zstd"), "{error}");
}

#[tokio::test]
async fn unknown_codec_kind_flags_and_bad_payloads_are_refused() {
    let frame = raw_frame(DATA, &data_payload(0, 0, 1, 9, b"x"));
    let error = read_bytes(&frame).await.0.unwrap_err();
    assert!(matches!(error, WireError::BadCodec { codec: 9 }), "{error}");

    let error = read_bytes(&raw_frame(0x42, b"")).await.0.unwrap_err();
    assert!(
        matches!(error, WireError::UnknownKind { kind: 0x42 }),
        "{error}"
    );

    let mut frame = written(Codec::None, &[Frame::Commit { cycle: 1 }]).await;
    frame[5] = 1;
    let crc = checksum(&frame[..12], &frame[16..]);
    frame[12..16].copy_from_slice(&crc.to_be_bytes());
    let error = read_bytes(&frame).await.0.unwrap_err();
    assert!(
        matches!(
            error,
            WireError::UnknownFlags {
                kind: "commit",
                flags: 1,
                ..
            }
        ),
        "{error}"
    );

    let error = read_bytes(&raw_frame(COMMIT, b"1234")).await.0.unwrap_err();
    assert_eq!(
        error.to_string(),
        "commit frame: bad payload: 4 bytes, expected 8"
    );
    let error = read_bytes(&raw_frame(DATA, b"12")).await.0.unwrap_err();
    assert!(
        matches!(error, WireError::BadPayload { kind: "data", .. }),
        "{error}"
    );
    let error = read_bytes(&raw_frame(REFUSED, &[0xff, 0xfe]))
        .await
        .0
        .unwrap_err();
    assert!(
        matches!(
            error,
            WireError::BadPayload {
                kind: "refused",
                ..
            }
        ),
        "{error}"
    );
    let error = read_bytes(&raw_frame(BEGIN, b"{\"vfs\":1}"))
        .await
        .0
        .unwrap_err();
    assert!(
        matches!(error, WireError::Json { kind: "begin", .. }),
        "{error}"
    );
    let error = read_bytes(&raw_frame(BASE_MISSING, b"{\"base\":-1}"))
        .await
        .0
        .unwrap_err();
    assert!(
        matches!(
            error,
            WireError::Json {
                kind: "base_missing",
                ..
            }
        ),
        "{error}"
    );
}

#[tokio::test]
async fn offsets_that_overflow_are_refused() {
    let mut zero = Vec::new();
    zero.extend_from_slice(&0u16.to_be_bytes());
    zero.extend_from_slice(&(u64::MAX - 10).to_be_bytes());
    zero.extend_from_slice(&11u64.to_be_bytes());
    let error = read_bytes(&raw_frame(ZERO, &zero)).await.0.unwrap_err();
    assert!(
        matches!(error, WireError::Overflow { kind: "zero", .. }),
        "{error}"
    );
    let frame = raw_frame(DATA, &data_payload(0, u64::MAX, 1, 0, b"x"));
    let error = read_bytes(&frame).await.0.unwrap_err();
    assert!(
        matches!(error, WireError::Overflow { kind: "data", .. }),
        "{error}"
    );
    let mut writer = FrameWriter::new(Vec::new(), Codec::None, None);
    assert!(matches!(
        writer.zero(0, u64::MAX, 1).await,
        Err(WireError::Overflow { .. })
    ));
}

#[tokio::test]
async fn a_volume_end_not_matching_what_arrived_is_refused() {
    let block = Frame::Data {
        volume: 0,
        offset: 0,
        codec: Codec::None,
        data: vec![1; 4096],
    };
    // The writer's own count and digest, but one Data frame lost on the way.
    let mut writer = FrameWriter::new(Vec::new(), Codec::Zstd, None);
    writer.send(&block).await.unwrap();
    let first = writer.get_mut().len();
    writer.send(&block).await.unwrap();
    writer.volume_end(0).await.unwrap();
    let mut bytes = writer.into_inner();
    bytes.drain(..first);
    let mut reader = FrameReader::new(&bytes[..]);
    assert!(matches!(reader.next().await.unwrap(), Frame::Data { .. }));
    let error = reader.next().await.unwrap_err();
    assert!(
        matches!(
            error,
            WireError::DigestMismatch {
                volume: 0,
                sent_blocks: 2,
                received_blocks: 1,
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error.to_string().contains("lost, repeated or corrupted"),
        "{error}"
    );
}

#[test]
fn frames_outside_their_volume_are_refused_by_check_bounds() {
    let volumes = begin().volumes;
    let data = |volume, offset, len| Frame::Data {
        volume,
        offset,
        codec: Codec::None,
        data: vec![0; len],
    };
    check_bounds(&data(1, (1 << 20) - 4096, 4096), &volumes).unwrap();
    check_bounds(&Frame::Commit { cycle: 1 }, &volumes).unwrap();
    let error = check_bounds(&data(1, (1 << 20) - 4096, 4097), &volumes).unwrap_err();
    assert_eq!(
        error.to_string(),
        "data frame for volume \"logs\" (#1): bytes 1044480..1048577 are outside the volume's \
         1048576 bytes"
    );
    let zero = Frame::Zero {
        volume: 0,
        offset: u64::MAX,
        len: u64::MAX,
    };
    let error = check_bounds(&zero, &volumes).unwrap_err();
    assert!(
        matches!(&error, WireError::OutOfBounds { kind: "zero", volume, index: 0, size, .. }
            if volume == "data" && *size == 1 << 30),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("18446744073709551615..36893488147419103230")
    );
    let error = check_bounds(&data(2, 0, 1), &volumes).unwrap_err();
    assert_eq!(
        error.to_string(),
        "data frame for volume #2: the cycle has 2 volumes (#0..#1)"
    );
    let end = Frame::VolumeEnd {
        volume: 7,
        blocks: 0,
        digest: [0; 32],
    };
    assert!(matches!(
        check_bounds(&end, &volumes),
        Err(WireError::UnknownVolume { volume: 7, .. })
    ));
}

#[tokio::test]
async fn the_writer_is_paced_by_its_throttle() {
    tokio::time::pause();
    let start = tokio::time::Instant::now();
    let mut writer = FrameWriter::new(tokio::io::sink(), Codec::None, Some(10 << 20));
    let block = noise(1 << 20, 1);
    for i in 0..20 {
        writer.data(0, i << 20, &block).await.unwrap();
    }
    let took = start.elapsed();
    // 20 MiB and headers at 10 MiB/s, less the 1 MiB the bucket starts with.
    assert!(
        took >= std::time::Duration::from_millis(1_890)
            && took <= std::time::Duration::from_millis(1_910),
        "{took:?}"
    );
}

/// Prints writer + reader throughput over an in-memory duplex for each codec; no assertion on
/// speed. 256 MiB in release builds, 32 MiB otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_of_writer_and_reader_per_codec() {
    let total: usize = if cfg!(debug_assertions) {
        32 << 20
    } else {
        256 << 20
    };
    const BLOCK: usize = 1 << 20;
    let source = std::sync::Arc::new(half_compressible(32 << 20, 11));
    for codec in CODECS {
        let (a, b) = duplex(4 << 20);
        let started = Instant::now();
        let writer = tokio::spawn({
            let source = source.clone();
            async move {
                let mut w = FrameWriter::new(a, codec, None);
                let mut offset = 0usize;
                while offset < total {
                    let at = offset % source.len();
                    w.data(0, offset as u64, &source[at..at + BLOCK])
                        .await
                        .unwrap();
                    offset += BLOCK;
                }
                w.volume_end(0).await.unwrap();
                w.commit(1).await.unwrap();
                w.into_inner().shutdown().await.unwrap();
            }
        });
        let mut r = FrameReader::new(b);
        let mut bytes = 0;
        loop {
            match r.next().await.unwrap() {
                Frame::Data { data, .. } => bytes += data.len(),
                Frame::Commit { .. } => break,
                _ => {}
            }
        }
        writer.await.unwrap();
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(bytes, total);
        let stats = r.stats();
        println!(
            "wire throughput {codec:>4}: {:>7.0} MB/s of data ({} MiB in {secs:.2} s, {:.0} MiB on the wire, ratio {:.2}){}",
            total as f64 / secs / 1e6,
            total >> 20,
            stats.wire_bytes as f64 / (1 << 20) as f64,
            total as f64 / stats.wire_bytes as f64,
            if cfg!(debug_assertions) {
                " [debug build]"
            } else {
                ""
            },
        );
    }
}

#[tokio::test]
async fn a_resume_frame_whose_count_disagrees_with_its_length_is_refused() {
    let mut payload = 12u64.to_be_bytes().to_vec();
    payload.extend_from_slice(&2u16.to_be_bytes());
    payload.extend_from_slice(&7u64.to_be_bytes());
    let error = read_bytes(&raw_frame(RESUME, &payload))
        .await
        .0
        .unwrap_err();
    assert!(
        matches!(&error, WireError::BadPayload { kind: "resume", reason } if reason.contains("18 bytes, expected 26")),
        "{error}"
    );
    let error = read_bytes(&raw_frame(RESUME, &[0; 9])).await.0.unwrap_err();
    assert!(
        matches!(&error, WireError::BadPayload { kind: "resume", .. }),
        "{error}"
    );
}
