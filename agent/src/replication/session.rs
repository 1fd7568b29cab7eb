//! A cycle over a data connection: [`send`] on the active site (frames from the pieces of a
//! delta), [`receive`] on the DR site (frames checked, handed to a [`Sink`] on a thread of its
//! own, `Resume` answered to `Begin`, then `Committed` or `Refused`).
//!
//! Timeouts: every frame must arrive, and every frame must be written, within
//! [`FRAME_TIMEOUT`] of the previous one, so a cut link fails the cycle on both sides in that
//! time (TCP alone would retry for many minutes). The sender waits [`BEGIN_TIMEOUT`] for the
//! DR site to get ready (it may first restore its replicas), and [`COMMIT_TIMEOUT`] for the
//! snapshot once all is sent.
use std::time::Duration;

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _},
    sync::{mpsc, oneshot},
};

use super::{
    codec::Codec,
    compress_stage::{CompressStage, DEPTH, Staged},
    cycle::{CycleError, Piece},
    resume::check_offsets,
    sink::{Began, Sink, SinkError},
    wire::{
        BaseMissing, Begin, Frame, FrameReader, FrameWriter, PoolFull, WireError, WireStats,
        check_bounds,
    },
};
use crate::state::Snapshot;

/// How long either side waits for the next frame to arrive or to be written before giving the
/// cycle up. Frames carry at most 1 MiB of data ([`super::cycle::PIECE`]); the longest
/// legitimate pause is the throttle at a very low bandwidth limit (1 MiB at 64 KiB/s is 16 s)
/// or the DR site's fsync of a checkpoint.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the sender waits for `Resume` after `Begin` (the DR site may restore its replicas
/// from the last snapshot first: reflinks, and removals of large images).
pub const BEGIN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the sender waits for `Committed` after `Commit`.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a sender that failed waits for the DR site's reason (already on its way if any).
const REASON_TIMEOUT: Duration = Duration::from_secs(2);

/// `fut` within `limit`, or a timeout error.
async fn within<T, E: Into<SessionError>>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, SessionError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(SessionError::Timeout { after: limit }),
    }
}

/// The next frame, or a timeout error.
async fn next_within<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    limit: Duration,
) -> Result<Frame, SessionError> {
    match tokio::time::timeout(limit, reader.next()).await {
        Ok(frame) => Ok(frame?),
        Err(_) => Err(SessionError::Timeout { after: limit }),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the peer sent or took nothing for {after:?}")]
    Timeout { after: Duration },
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Cycle(#[from] CycleError),
    #[error("the DR site refused cycle {cycle}: {reason}")]
    Refused { cycle: u64, reason: String },
    /// The DR site has no room for the cycle in its pool (nothing was changed there).
    #[error("the DR site has no room for cycle {cycle}: pool {} needs {} bytes, {} free", full.pool, full.needs, full.free)]
    PoolFull { cycle: u64, full: PoolFull },
    /// The DR site does not hold the delta's base as its latest snapshot (nothing was changed
    /// there): a full copy is needed.
    #[error("the DR site cannot apply cycle {cycle}: it is a delta on snapshot {}, the DR site's latest is {}",
        missing.base, missing.latest.map_or("none".to_string(), |l| l.to_string()))]
    BaseMissing { cycle: u64, missing: BaseMissing },
    #[error("cycle {cycle}: expected {expected}, the peer sent {got}")]
    Unexpected {
        cycle: u64,
        expected: &'static str,
        got: &'static str,
    },
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("the replica writer stopped")]
    SinkGone,
    #[error("cannot start the compression thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the compression thread stopped")]
    StageGone,
}

/// What a sent cycle produced.
#[derive(Clone, Debug)]
pub struct Sent {
    pub snapshot: u64,
    pub stats: WireStats,
    /// Per volume, the offset the copy resumed from (all zeros when it did not).
    pub resumed: Vec<u64>,
}

/// Sends one cycle: `Begin`; waits for the DR site's `Resume`; the pieces `pieces` makes for
/// its offsets (checked first: unusable offsets are logged and replaced by zeros, a full
/// copy from the start, which is always safe), a `VolumeEnd` per volume, `Commit`; then waits
/// for the DR site's `Committed`.
pub async fn send<S, F, I>(
    stream: S,
    begin: &Begin,
    pieces: F,
    codec: Codec,
    bandwidth: Option<u64>,
) -> Result<Sent, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&[u64]) -> I,
    I: Iterator<Item = Result<Piece, CycleError>>,
{
    let (r, w) = tokio::io::split(stream);
    let mut writer = FrameWriter::new(w, codec, bandwidth);
    let mut reader = FrameReader::new(r);
    let mut resumed = vec![0; begin.volumes.len()];
    let sent = async {
        within(FRAME_TIMEOUT, writer.begin(begin)).await?;
        within(FRAME_TIMEOUT, writer.flush()).await?;
        let offsets = match next_within(&mut reader, BEGIN_TIMEOUT).await? {
            Frame::Resume { cycle, offsets } if cycle == begin.cycle => offsets,
            // The DR site committed this very point already (its answer was lost).
            Frame::Committed { cycle, snapshot } if cycle == begin.cycle => {
                resumed = begin.volumes.iter().map(|v| v.size).collect();
                return Ok(Some(snapshot));
            }
            Frame::Refused { reason } => {
                return Err(SessionError::Refused {
                    cycle: begin.cycle,
                    reason,
                });
            }
            Frame::BaseMissing(missing) => {
                return Err(SessionError::BaseMissing {
                    cycle: begin.cycle,
                    missing,
                });
            }
            // No room at the DR site for this cycle: checked before anything is written.
            Frame::PoolFull(full) => {
                return Err(SessionError::PoolFull {
                    cycle: begin.cycle,
                    full,
                });
            }
            other => {
                return Err(SessionError::Unexpected {
                    cycle: begin.cycle,
                    expected: "resume for this cycle",
                    got: other.kind(),
                });
            }
        };
        let sizes: Vec<u64> = begin.volumes.iter().map(|v| v.size).collect();
        match check_offsets(&offsets, &sizes, begin.base.is_none() && begin.point.is_some()) {
            Ok(()) => resumed = offsets,
            Err(e) => tracing::error!(vfs = %begin.vfs, cycle = begin.cycle, event = "resume_ignored",
                error = %e, "the DR site's resume offsets are unusable; the copy starts from the beginning"),
        }
        // Pieces are read here, compressed on the stage's thread, and written here, up to
        // `DEPTH` pieces apart.
        let mut stage = CompressStage::start(codec).map_err(SessionError::Thread)?;
        let mut pieces = pieces(&resumed);
        let mut read_all = false;
        // A piece that cannot be read ends the cycle once those read before it are sent (as
        // when they were sent one by one: a resumed copy keeps them).
        let mut unreadable = None;
        loop {
            while !read_all && stage.in_flight() < DEPTH {
                match pieces.next() {
                    Some(Ok(piece)) => {
                        if !stage.push(piece) {
                            return Err(SessionError::StageGone);
                        }
                    }
                    Some(Err(e)) => {
                        unreadable = Some(e);
                        read_all = true;
                    }
                    None => read_all = true,
                }
            }
            if stage.in_flight() == 0 {
                if let Some(e) = unreadable {
                    return Err(e.into());
                }
                break;
            }
            match stage.next().await.ok_or(SessionError::StageGone)? {
                Staged::Data {
                    volume,
                    offset,
                    data,
                    codec,
                    payload,
                } => {
                    let frame = writer.data_encoded(volume as u16, offset, &data, codec, &payload);
                    within(FRAME_TIMEOUT, frame).await?;
                }
                Staged::Zero {
                    volume,
                    offset,
                    len,
                } => within(FRAME_TIMEOUT, writer.zero(volume as u16, offset, len)).await?,
            }
        }
        for v in 0..begin.volumes.len() {
            within(FRAME_TIMEOUT, writer.volume_end(v as u16)).await?;
        }
        within(FRAME_TIMEOUT, writer.commit(begin.cycle)).await?;
        Ok::<_, SessionError>(None)
    }
    .await;
    let sent = match sent {
        Err(
            e @ (SessionError::Refused { .. }
            | SessionError::PoolFull { .. }
            | SessionError::BaseMissing { .. }),
        ) => return Err(e),
        Ok(Some(snapshot)) => {
            return Ok(Sent {
                snapshot,
                stats: writer.stats(),
                resumed,
            });
        }
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    // Whether sending worked or not, the DR site may have said why it stopped.
    // Committing fsyncs and reflinks every replica: allow it time.
    let limit = if sent.is_ok() {
        COMMIT_TIMEOUT
    } else {
        // Tell the DR site now rather than after its frame timeout.
        let _ = tokio::time::timeout(REASON_TIMEOUT, writer.get_mut().shutdown()).await;
        REASON_TIMEOUT
    };
    let answer = next_within(&mut reader, limit).await;
    match (sent, answer) {
        (_, Ok(Frame::Refused { reason })) => Err(SessionError::Refused {
            cycle: begin.cycle,
            reason,
        }),
        (_, Ok(Frame::PoolFull(full))) => Err(SessionError::PoolFull {
            cycle: begin.cycle,
            full,
        }),
        (Err(e), _) => Err(e),
        (Ok(()), Ok(Frame::Committed { cycle, snapshot })) if cycle == begin.cycle => Ok(Sent {
            snapshot,
            stats: writer.stats(),
            resumed,
        }),
        (Ok(()), Ok(other)) => Err(SessionError::Unexpected {
            cycle: begin.cycle,
            expected: "committed",
            got: other.kind(),
        }),
        (Ok(()), Err(e)) => Err(e),
    }
}

/// The DR site's answer to `Begin`.
enum Ready {
    /// Receive from these offsets.
    Resume(Vec<u64>),
    /// This point is committed already.
    Committed(Snapshot),
}

enum Job {
    Begin(String, Begin, oneshot::Sender<Result<Ready, SinkError>>),
    Piece(Piece),
    VolumeEnd(usize, u64, [u8; 32]),
    Commit(u64, oneshot::Sender<Result<Snapshot, SinkError>>),
}

/// A cycle received and committed, and the sink that wrote it, handed back so the caller can
/// prune ([`Sink::prune`]) once the sender has its answer.
pub struct Received {
    pub snapshot: Snapshot,
    pub sink: Sink,
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received")
            .field("snapshot", &self.snapshot)
            .finish_non_exhaustive()
    }
}

/// Receives one cycle from site `from` into `sink` (which runs on a thread of its own) and
/// answers the sender. Any bad frame, bound or digest refuses the cycle, leaving the replicas
/// to be restored from the last snapshot by the next cycle.
pub async fn receive<S>(stream: S, from: &str, sink: Sink) -> Result<Received, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (r, w) = tokio::io::split(stream);
    let mut reader = FrameReader::new(r);
    let mut writer = FrameWriter::new(w, Codec::None, None);
    let (jobs, rx) = mpsc::channel::<Job>(16);
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("replica-writer".into())
        .spawn(move || {
            let _ = done_tx.send(run_sink(sink, rx));
        })
        .map_err(|_| SessionError::SinkGone)?;
    let result = receive_frames(&mut reader, &mut writer, from, &jobs).await;
    drop(jobs);
    let sink = done_rx.await.map_err(|_| SessionError::SinkGone);
    match result.and_then(|snapshot| Ok((snapshot, sink?))) {
        Ok((snapshot, sink)) => {
            writer.committed(snapshot.cycle, snapshot.id).await?;
            Ok(Received { snapshot, sink })
        }
        Err(SessionError::Sink(SinkError::PoolFull { vfs, full })) => {
            let _ = writer.pool_full(&full).await;
            Err(SessionError::Sink(SinkError::PoolFull { vfs, full }))
        }
        Err(SessionError::Sink(SinkError::BaseMissing { vfs, missing })) => {
            let _ = writer.base_missing(&missing).await;
            Err(SessionError::Sink(SinkError::BaseMissing { vfs, missing }))
        }
        Err(e) => {
            let _ = writer.refused(&e.to_string()).await;
            Err(e)
        }
    }
}

async fn receive_frames<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    from: &str,
    jobs: &mpsc::Sender<Job>,
) -> Result<Snapshot, SessionError> {
    let begin = match next_within(reader, FRAME_TIMEOUT).await? {
        Frame::Begin(b) => b,
        other => {
            return Err(SessionError::Unexpected {
                cycle: 0,
                expected: "begin",
                got: other.kind(),
            });
        }
    };
    let cycle = begin.cycle;
    let (tx, rx) = oneshot::channel();
    jobs.send(Job::Begin(from.to_owned(), begin.clone(), tx))
        .await
        .map_err(|_| SessionError::SinkGone)?;
    let offsets = match rx.await.map_err(|_| SessionError::SinkGone)?? {
        Ready::Resume(offsets) => offsets,
        Ready::Committed(snapshot) => return Ok(snapshot),
    };
    within(FRAME_TIMEOUT, writer.resume(cycle, &offsets)).await?;
    loop {
        let frame = next_within(reader, FRAME_TIMEOUT).await?;
        check_bounds(&frame, &begin.volumes)?;
        let job = match frame {
            Frame::Data {
                volume,
                offset,
                data,
                ..
            } => Job::Piece(Piece::Data {
                volume: volume as usize,
                offset,
                data,
            }),
            Frame::Zero {
                volume,
                offset,
                len,
            } => Job::Piece(Piece::Zero {
                volume: volume as usize,
                offset,
                len,
            }),
            Frame::VolumeEnd {
                volume,
                blocks,
                digest,
            } => Job::VolumeEnd(volume as usize, blocks, digest),
            Frame::Commit { cycle: c } if c == cycle => {
                let (tx, rx) = oneshot::channel();
                jobs.send(Job::Commit(reader.stats().wire_bytes, tx))
                    .await
                    .map_err(|_| SessionError::SinkGone)?;
                return Ok(rx.await.map_err(|_| SessionError::SinkGone)??);
            }
            other => {
                return Err(SessionError::Unexpected {
                    cycle,
                    expected: "data, zero, volume_end or commit",
                    got: other.kind(),
                });
            }
        };
        jobs.send(job).await.map_err(|_| SessionError::SinkGone)?;
    }
}

/// The replica writer: applies jobs in order; the first error is reported at `Commit` (or by
/// the channel closing early). Hands the sink back.
fn run_sink(mut sink: Sink, mut jobs: mpsc::Receiver<Job>) -> Sink {
    let mut receiving = None;
    let mut failed: Option<SinkError> = None;
    while let Some(job) = jobs.blocking_recv() {
        match job {
            Job::Begin(from, b, reply) => match sink.begin(&from, &b) {
                Ok(Began::Receiving(r)) => {
                    let _ = reply.send(Ok(Ready::Resume(r.resume.clone())));
                    receiving = Some(r);
                }
                Ok(Began::Committed(s)) => {
                    let _ = reply.send(Ok(Ready::Committed(s)));
                    return sink;
                }
                // A full pool (the sender pauses) and a missing base (it resyncs) keep their
                // kind; anything else is a refusal.
                Err(e @ (SinkError::PoolFull { .. } | SinkError::BaseMissing { .. })) => {
                    let _ = reply.send(Err(e));
                }
                Err(e) => {
                    let _ = reply.send(Err(SinkError::Refused {
                        vfs: b.vfs.clone(),
                        what: e.to_string(),
                    }));
                }
            },
            Job::Piece(p) => {
                if failed.is_none()
                    && let Some(r) = receiving.as_mut()
                    && let Err(e) = sink.apply(r, &p)
                {
                    if matches!(e, SinkError::PoolFull { .. }) {
                        // The replicas are restored already; the cycle is over.
                        receiving = None;
                    }
                    failed = Some(e);
                }
            }
            Job::VolumeEnd(v, blocks, digest) => {
                if failed.is_none()
                    && let Some(r) = receiving.as_mut()
                    && let Err(e) = sink.volume_end(r, v, blocks, &digest)
                {
                    failed = Some(e);
                }
            }
            Job::Commit(shipped, reply) => {
                let result = match (failed.take(), receiving.take()) {
                    (Some(e), _) => Err(e),
                    (None, Some(r)) => sink.commit(r, shipped),
                    (None, None) => Err(SinkError::Refused {
                        vfs: String::new(),
                        what: "commit without a cycle".into(),
                    }),
                };
                let _ = reply.send(result);
                return sink;
            }
        }
    }
    sink
}
