//! A cycle over a data connection: [`send`] on the active site (frames from the pieces of a
//! delta), [`receive`] on the DR site (frames checked, handed to a [`Sink`] on a thread of its
//! own, `Committed` or `Refused` answered).
use std::time::Duration;

use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{mpsc, oneshot},
};

use super::{
    codec::Codec,
    cycle::{CycleError, Piece},
    sink::{Sink, SinkError},
    wire::{Begin, Frame, FrameReader, FrameWriter, PoolFull, WireError, WireStats, check_bounds},
};
use crate::state::Snapshot;

/// How long the receiver waits for the sender's next frame before giving the cycle up.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the sender waits for `Committed` after `Commit`.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(600);

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
    #[error("the peer sent nothing for {after:?}")]
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
}

/// What a sent cycle produced.
#[derive(Clone, Debug)]
pub struct Sent {
    pub snapshot: u64,
    pub stats: WireStats,
}

/// Sends one cycle: `Begin`, the pieces, a `VolumeEnd` per volume, `Commit`; then waits for
/// the DR site's `Committed`.
pub async fn send<S, I>(
    stream: S,
    begin: &Begin,
    pieces: I,
    codec: Codec,
    bandwidth: Option<u64>,
) -> Result<Sent, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    I: Iterator<Item = Result<Piece, CycleError>>,
{
    let (r, w) = tokio::io::split(stream);
    let mut writer = FrameWriter::new(w, codec, bandwidth);
    let mut reader = FrameReader::new(r);
    let sent = async {
        writer.begin(begin).await?;
        for piece in pieces {
            match piece? {
                Piece::Data {
                    volume,
                    offset,
                    data,
                } => {
                    writer.data(volume as u16, offset, &data).await?;
                }
                Piece::Zero {
                    volume,
                    offset,
                    len,
                } => writer.zero(volume as u16, offset, len).await?,
            }
        }
        for v in 0..begin.volumes.len() {
            writer.volume_end(v as u16).await?;
        }
        writer.commit(begin.cycle).await?;
        Ok::<(), SessionError>(())
    }
    .await;
    // Whether sending worked or not, the DR site may have said why it stopped.
    // Committing fsyncs and reflinks every replica: allow it time.
    let answer = next_within(&mut reader, COMMIT_TIMEOUT).await;
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
        }),
        (Ok(()), Ok(other)) => Err(SessionError::Unexpected {
            cycle: begin.cycle,
            expected: "committed",
            got: other.kind(),
        }),
        (Ok(()), Err(e)) => Err(e),
    }
}

enum Job {
    Begin(String, Begin, oneshot::Sender<Result<(), SinkError>>),
    Piece(Piece),
    VolumeEnd(usize, u64, [u8; 32]),
    Commit(u64, oneshot::Sender<Result<Snapshot, SinkError>>),
}

/// Receives one cycle from site `from` into `sink` (which runs on a thread of its own) and
/// answers the sender. Any bad frame, bound or digest refuses the cycle, leaving the replicas
/// to be restored from the last snapshot by the next cycle.
pub async fn receive<S>(stream: S, from: &str, sink: Sink) -> Result<Snapshot, SessionError>
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
    let result = receive_frames(&mut reader, from, &jobs).await;
    drop(jobs);
    let _ = done_rx.await;
    match result {
        Ok(snapshot) => {
            writer.committed(snapshot.cycle, snapshot.id).await?;
            Ok(snapshot)
        }
        Err(SessionError::Sink(SinkError::PoolFull { vfs, full })) => {
            let _ = writer.pool_full(&full).await;
            Err(SessionError::Sink(SinkError::PoolFull { vfs, full }))
        }
        Err(e) => {
            let _ = writer.refused(&e.to_string()).await;
            Err(e)
        }
    }
}

async fn receive_frames<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
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
    rx.await.map_err(|_| SessionError::SinkGone)??;
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
/// the channel closing early).
fn run_sink(mut sink: Sink, mut jobs: mpsc::Receiver<Job>) -> Result<(), SinkError> {
    let mut receiving = None;
    let mut failed: Option<SinkError> = None;
    while let Some(job) = jobs.blocking_recv() {
        match job {
            Job::Begin(from, b, reply) => {
                let r = sink.begin(&from, &b);
                let _ = reply.send(r.as_ref().map(|_| ()).map_err(|e| match e {
                    SinkError::PoolFull { vfs, full } => SinkError::PoolFull {
                        vfs: vfs.clone(),
                        full: full.clone(),
                    },
                    e => SinkError::Refused {
                        vfs: b.vfs.clone(),
                        what: e.to_string(),
                    },
                }));
                receiving = r.ok();
            }
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
                    && let Some(r) = receiving.as_ref()
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
                return Ok(());
            }
        }
    }
    Ok(())
}
