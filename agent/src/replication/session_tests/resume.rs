//! Redoing cycles over an in-memory connection: an interrupted full copy resumes, bogus resume
//! offsets are not used, a point committed already is recognised, a lost answer to a delta's
//! commit is replaced by the next point.
use std::path::{Path, PathBuf};

use super::super::{
    codec::Codec,
    cycle::{CycleError, Pieces, Point, delta, take_point},
    fsops::Images as _,
    resume::skip_below,
    session::{Sent, SessionError, receive, send},
    wire::{Begin, Frame, FrameReader, FrameWriter},
};
use super::{MIB, World, world};
use crate::state::Store;

/// A full copy of `point` (identity `id`) whose sender dies after `stop_after` pieces, if given.
async fn full_copy(
    w: &World,
    point: &Point,
    id: u64,
    stop_after: Option<usize>,
    checkpoint_bytes: u64,
) -> (Result<Sent, SessionError>, Result<u64, SessionError>) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let mut src = w.src.clone();
    let d = delta(&mut src, None, point).unwrap();
    let begin = Begin {
        point: Some(id),
        ..w.begin(point.cycle, None)
    };
    let mut sink = w.sink();
    sink.checkpoint_bytes = checkpoint_bytes;
    let pieces = move |offsets: &[u64]| {
        let rest = skip_below(&d, offsets);
        let mut all: Vec<_> = Pieces::new(&mut src, point, rest).collect();
        if let Some(n) = stop_after {
            all.truncate(n);
            all.push(Err(CycleError::Protocol {
                cycle: point.cycle,
                what: "the sender died".into(),
            }));
        }
        all.into_iter()
    };
    let (sent, got) = tokio::join!(send(a, &begin, pieces, Codec::Lz4, None), async move {
        receive(b, "site-a", sink).await
    });
    (sent, got.map(|r| r.snapshot.id))
}

/// 8 MiB of distinct data in the 16 MiB volume, and a point of it.
fn eight_mib(w: &mut World) -> Point {
    let img = w.vols[0].image.clone();
    let data: Vec<u8> = (0..8 * MIB).map(|i| (i / 4096 % 251) as u8).collect();
    w.src.write_user(&img, 0, &data).unwrap();
    take_point(&mut w.src, &w.vols, 1, Path::new("/a/clones")).unwrap()
}

#[tokio::test]
async fn an_interrupted_full_copy_resumes_where_its_replica_was_synced() {
    let mut w = world();
    let p1 = eight_mib(&mut w);
    let (sent, got) = full_copy(&w, &p1, 77, Some(5), MIB).await;
    assert!(sent.is_err() && got.is_err(), "{sent:?} {got:?}");
    let store = Store::open(w.dir.path()).unwrap();
    let flight = store.in_flight("fs1").unwrap().unwrap();
    assert_eq!(
        flight.progress,
        serde_json::json!({"point": 77, "offsets": [5 * MIB]})
    );
    assert!(store.snapshots("fs1").unwrap().is_empty());

    let (sent, got) = full_copy(&w, &p1, 77, None, MIB).await;
    let sent = sent.unwrap();
    assert_eq!((sent.snapshot, got.unwrap()), (1, 1));
    assert_eq!(sent.resumed, [5 * MIB]);
    assert_eq!(sent.stats.data_bytes, 3 * MIB, "only the rest was shipped");
    let snap = PathBuf::from("/b/pool/snapshots/fs1/1/data.img");
    assert_eq!(w.dst.content(&snap), w.src.content(&p1.clones[0]));
    assert_eq!(
        Store::open(w.dir.path()).unwrap().in_flight("fs1").unwrap(),
        None
    );
}

#[tokio::test]
async fn a_full_copy_of_another_point_starts_over() {
    let mut w = world();
    let p1 = eight_mib(&mut w);
    full_copy(&w, &p1, 77, Some(5), MIB).await.0.unwrap_err();
    // The active site lost its clones and took a new point: other data, other identity.
    let img = w.vols[0].image.clone();
    w.src.write_user(&img, 0, &[9u8; 8192]).unwrap();
    w.src.remove(&p1.clones[0]).unwrap();
    let p1b = take_point(&mut w.src, &w.vols, 1, Path::new("/a/clones")).unwrap();
    let (sent, _) = full_copy(&w, &p1b, 78, None, MIB).await;
    let sent = sent.unwrap();
    assert_eq!(sent.resumed, [0]);
    assert_eq!(sent.stats.data_bytes, 8 * MIB);
    let snap = PathBuf::from("/b/pool/snapshots/fs1/1/data.img");
    assert_eq!(w.dst.content(&snap), w.src.content(&p1b.clones[0]));
}

#[tokio::test]
async fn recorded_offsets_beyond_the_volume_are_not_used() {
    let mut w = world();
    let p1 = eight_mib(&mut w);
    full_copy(&w, &p1, 77, Some(3), MIB).await.0.unwrap_err();
    let mut store = Store::open(w.dir.path()).unwrap();
    let bogus = serde_json::json!({"point": 77, "offsets": [1u64 << 40]});
    store.cycle_progress("fs1", 1, &bogus).unwrap();
    let (sent, _) = full_copy(&w, &p1, 77, None, MIB).await;
    let sent = sent.unwrap();
    assert_eq!(sent.resumed, [0]);
    let snap = PathBuf::from("/b/pool/snapshots/fs1/1/data.img");
    assert_eq!(w.dst.content(&snap), w.src.content(&p1.clones[0]));
}

/// A receiver that answers `Begin` with `resume` and records the frames that follow.
async fn answering(stream: tokio::io::DuplexStream, resume: Frame) -> Vec<Frame> {
    let (r, w) = tokio::io::split(stream);
    let (mut reader, mut writer) = (FrameReader::new(r), FrameWriter::new(w, Codec::None, None));
    let mut frames = vec![reader.next().await.unwrap()];
    writer.send(&resume).await.unwrap();
    writer.flush().await.unwrap();
    while let Ok(f) = reader.next().await {
        if let Frame::Commit { cycle } = f {
            writer.committed(cycle, cycle).await.unwrap();
        }
        frames.push(f);
    }
    frames
}

#[tokio::test]
async fn the_sender_ignores_resume_offsets_beyond_a_volume_and_refuses_another_cycles() {
    let mut w = world();
    let p1 = eight_mib(&mut w);
    let d = delta(&mut w.src, None, &p1).unwrap();
    let begin = Begin {
        point: Some(77),
        ..w.begin(1, None)
    };
    for (resume, ok) in [
        (vec![17 * MIB], true),
        (vec![0, 0], true),
        (vec![4 * MIB], false), // another cycle's
    ] {
        let (a, b) = tokio::io::duplex(1 << 20);
        let cycle = if ok { 1 } else { 2 };
        let answer = Frame::Resume {
            cycle,
            offsets: resume.clone(),
        };
        let mut src = w.src.clone();
        let pieces = |offsets: &[u64]| {
            Pieces::new(&mut src, &p1, skip_below(&d, offsets))
                .collect::<Vec<_>>()
                .into_iter()
        };
        let (sent, frames) = tokio::join!(
            send(a, &begin, pieces, Codec::None, None),
            answering(b, answer)
        );
        if ok {
            let sent = sent.unwrap();
            assert_eq!(sent.resumed, [0], "{resume:?}");
            assert_eq!(sent.stats.data_bytes, 8 * MIB, "{resume:?}");
            assert!(matches!(frames[1], Frame::Data { offset: 0, .. }));
        } else {
            let e = sent.unwrap_err();
            assert!(
                matches!(
                    e,
                    SessionError::Unexpected {
                        expected: "resume for this cycle",
                        ..
                    }
                ),
                "{e}"
            );
            assert_eq!(frames.len(), 1, "nothing but begin was sent");
        }
    }
}

/// A cycle of `point` (identity `id`) on `prev` (snapshot `base`), run to its end.
async fn ship(
    w: &World,
    prev: Option<&Point>,
    point: &Point,
    base: Option<u64>,
    id: u64,
) -> (Result<Sent, SessionError>, Result<u64, SessionError>) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let mut src = w.src.clone();
    let d = delta(&mut src, prev, point).unwrap();
    let begin = Begin {
        point: Some(id),
        ..w.begin(point.cycle, base)
    };
    let sink = w.sink();
    let pieces = move |offsets: &[u64]| {
        let all: Vec<_> = Pieces::new(&mut src, point, skip_below(&d, offsets)).collect();
        all.into_iter()
    };
    let (sent, got) = tokio::join!(send(a, &begin, pieces, Codec::Lz4, None), async move {
        receive(b, "site-a", sink).await
    });
    (sent, got.map(|r| r.snapshot.id))
}

#[tokio::test]
async fn a_point_committed_already_is_answered_without_shipping_it_again() {
    let mut w = world();
    let p1 = eight_mib(&mut w);
    let (sent, _) = ship(&w, None, &p1, None, 77).await;
    assert_eq!(sent.unwrap().snapshot, 1);
    // The answer was lost: the sender offers the same point again.
    let (sent, got) = ship(&w, None, &p1, None, 77).await;
    let sent = sent.unwrap();
    assert_eq!((sent.snapshot, got.unwrap()), (1, 1));
    assert_eq!(sent.stats.data_bytes, 0);
    assert_eq!(
        Store::open(w.dir.path())
            .unwrap()
            .snapshots("fs1")
            .unwrap()
            .len(),
        1
    );
    // Another point as cycle 1 again would replace the only snapshot: refused, kept.
    let (sent, _) = ship(&w, None, &p1, None, 78).await;
    assert!(sent.is_err());
    let snap = PathBuf::from("/b/pool/snapshots/fs1/1/data.img");
    assert_eq!(w.dst.content(&snap), w.src.content(&p1.clones[0]));
}

#[tokio::test]
async fn a_delta_whose_commit_answer_was_lost_is_replaced_by_the_next_point() {
    let mut w = world();
    let p1 = eight_mib(&mut w);
    ship(&w, None, &p1, None, 77).await.0.unwrap();
    let img = w.vols[0].image.clone();
    w.src.write_user(&img, 9 * MIB, &[5u8; 8192]).unwrap();
    let p2 = take_point(&mut w.src, &w.vols, 2, Path::new("/a/clones")).unwrap();
    ship(&w, Some(&p1), &p2, Some(1), 80).await.0.unwrap();
    // The sender never learned of snapshot 2: it ships a later point as cycle 2 on snapshot 1.
    w.src.write_user(&img, 12 * MIB, &[6u8; 4096]).unwrap();
    w.src.remove(&p2.clones[0]).unwrap();
    let p2b = take_point(&mut w.src, &w.vols, 2, Path::new("/a/clones")).unwrap();
    let (sent, got) = ship(&w, Some(&p1), &p2b, Some(1), 81).await;
    assert_eq!((sent.unwrap().snapshot, got.unwrap()), (2, 2));
    let snap = PathBuf::from("/b/pool/snapshots/fs1/2/data.img");
    assert_eq!(w.dst.content(&snap), w.src.content(&p2b.clones[0]));
    assert_eq!(w.snapshot_ids(), [1, 2]);
    let store = Store::open(w.dir.path()).unwrap();
    assert_eq!(store.snapshot_point("fs1", 2).unwrap(), Some(81));
}
