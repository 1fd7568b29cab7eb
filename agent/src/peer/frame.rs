//! Framing: a 4-byte big-endian length, then that many bytes of JSON.
//!
//! The length is checked against [`MAX_FRAME`] before anything is allocated, and the body is read
//! into a buffer that grows with what actually arrives, so a peer declaring a huge frame and
//! sending nothing costs nothing.
use std::io::ErrorKind;

use serde::{Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Largest frame body accepted or sent: 16 MiB.
pub const MAX_FRAME: usize = 16 << 20;

/// What can go wrong with one frame. The connection it came from is closed after any of these.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The other side closed the connection cleanly between frames.
    #[error("connection closed")]
    Closed,
    /// The connection ended inside a frame (header or body).
    #[error("truncated frame: {part} ended after {got} of {expected} bytes")]
    Truncated {
        part: &'static str,
        expected: usize,
        got: usize,
    },
    /// The declared length exceeds [`MAX_FRAME`]; nothing of the body was read.
    #[error("frame of {len} bytes refused: larger than the {max} byte limit")]
    TooLarge { len: u64, max: usize },
    /// The body is not the JSON of the expected message.
    #[error("bad frame: {0}")]
    Json(#[source] serde_json::Error),
    /// Reading or writing the connection failed.
    #[error("{0}")]
    Io(#[source] std::io::Error),
}

/// Reads one frame body (the raw JSON bytes).
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Vec<u8>, FrameError> {
    let mut header = [0u8; 4];
    let got = read_full(reader, &mut header).await?;
    if got == 0 {
        return Err(FrameError::Closed);
    }
    if got < header.len() {
        return Err(FrameError::Truncated {
            part: "header",
            expected: header.len(),
            got,
        });
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max: MAX_FRAME,
        });
    }
    let mut body = Vec::with_capacity(len.min(64 << 10));
    match reader.take(len as u64).read_to_end(&mut body).await {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(FrameError::Io(e)),
    }
    if body.len() < len {
        return Err(FrameError::Truncated {
            part: "body",
            expected: len,
            got: body.len(),
        });
    }
    Ok(body)
}

/// Reads one frame and decodes its JSON body as `T`.
pub async fn read_json<T: DeserializeOwned, R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<T, FrameError> {
    let body = read_frame(reader).await?;
    serde_json::from_slice(&body).map_err(FrameError::Json)
}

/// Encodes `value` as JSON and writes it as one frame, then flushes.
pub async fn write_json<T: Serialize, W: AsyncWrite + Unpin>(
    writer: &mut W,
    value: &T,
) -> Result<(), FrameError> {
    let body = serde_json::to_vec(value).map_err(FrameError::Json)?;
    write_frame(writer, &body).await
}

/// Writes `body` as one frame, then flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    body: &[u8],
) -> Result<(), FrameError> {
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len: body.len() as u64,
            max: MAX_FRAME,
        });
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    writer.write_all(&frame).await.map_err(FrameError::Io)?;
    writer.flush().await.map_err(FrameError::Io)
}

/// Fills `buf` unless the stream ends first; returns how many bytes were read. A TLS stream
/// closed without `close_notify` (a dropped connection) ends like a plain one.
async fn read_full<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
) -> Result<usize, FrameError> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]).await {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(got)
}
