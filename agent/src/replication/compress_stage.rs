//! The sender's compression stage: pieces are compressed on a thread of their own, in order,
//! while the async side reads the next pieces and writes the frames of earlier ones, so disk
//! reads, compression and the socket overlap (on the same thread they took turns).
//!
//! At most [`DEPTH`] pieces are in the stage at once: pushing never blocks while
//! [`CompressStage::in_flight`] is below it.
use std::{sync::mpsc as std_mpsc, thread};

use tokio::sync::mpsc;

use super::{
    codec::{Codec, Compressor},
    cycle::Piece,
};

/// Pieces (of at most [`super::cycle::PIECE`] bytes) in the stage at once.
pub const DEPTH: usize = 4;

/// A piece out of the stage, in the order it went in.
pub enum Staged {
    Data {
        volume: usize,
        offset: u64,
        /// The piece's bytes (the digest covers them).
        data: Vec<u8>,
        /// The codec `payload` is encoded with ([`Codec::None`]: `payload` is `data`).
        codec: Codec,
        payload: Vec<u8>,
    },
    Zero {
        volume: usize,
        offset: u64,
        len: u64,
    },
}

pub struct CompressStage {
    input: Option<std_mpsc::SyncSender<Piece>>,
    output: mpsc::UnboundedReceiver<Staged>,
    in_flight: usize,
}

impl CompressStage {
    /// Starts the stage's thread, compressing with `codec`.
    pub fn start(codec: Codec) -> std::io::Result<CompressStage> {
        let (input, pieces) = std_mpsc::sync_channel::<Piece>(DEPTH);
        let (done, output) = mpsc::unbounded_channel();
        thread::Builder::new()
            .name("vfsdr-compress".into())
            .spawn(move || {
                let mut compressor = Compressor::new();
                for piece in pieces {
                    let staged = match piece {
                        Piece::Data {
                            volume,
                            offset,
                            data,
                        } => {
                            let mut payload = Vec::new();
                            let codec = compressor.compress(codec, &data, &mut payload);
                            Staged::Data {
                                volume,
                                offset,
                                data,
                                codec,
                                payload,
                            }
                        }
                        Piece::Zero {
                            volume,
                            offset,
                            len,
                        } => Staged::Zero {
                            volume,
                            offset,
                            len,
                        },
                    };
                    if done.send(staged).is_err() {
                        return;
                    }
                }
            })?;
        Ok(CompressStage {
            input: Some(input),
            output,
            in_flight: 0,
        })
    }

    /// Pieces pushed and not taken out yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Hands `piece` to the thread; `false` if the thread is gone. Blocks only when
    /// [`CompressStage::in_flight`] is [`DEPTH`] or more.
    pub fn push(&mut self, piece: Piece) -> bool {
        let sent = self.input.as_ref().is_some_and(|i| i.send(piece).is_ok());
        if sent {
            self.in_flight += 1;
        }
        sent
    }

    /// The oldest piece pushed, compressed; `None` if nothing is in flight or the thread is
    /// gone.
    pub async fn next(&mut self) -> Option<Staged> {
        if self.in_flight == 0 {
            return None;
        }
        let staged = self.output.recv().await?;
        self.in_flight -= 1;
        Some(staged)
    }
}

impl Drop for CompressStage {
    fn drop(&mut self) {
        // The thread ends once its input is closed (its last result, if any, is dropped).
        self.input.take();
    }
}
