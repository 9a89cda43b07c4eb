//! The two transports a connection runs over: a byte stream (TCP, or anything `AsyncRead` +
//! `AsyncWrite`) driven through the frame codec, or an in-process [`LocalLink`] that moves `Frame`
//! values unencoded.
//!
//! Writes go out in batches: the writer task hands over every frame that is ready and a stream
//! transport encodes them into one buffer and issues one `write_all`, so a burst of pipelined sends
//! costs one system call instead of one per frame.

use bytes::BytesMut;
use futures::StreamExt;
use tandem_protocol::link::LocalLink;
use tandem_protocol::{CodecError, Frame, FrameCodec};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::codec::{Encoder, FramedRead};

use crate::error::Error;

/// A boxed read half of a byte-stream transport.
pub(crate) type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// A boxed write half of a byte-stream transport.
pub(crate) type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// The receiving side.
pub(crate) enum FrameRx {
    Stream(FramedRead<BoxRead, FrameCodec>),
    Local(mpsc::Receiver<Frame>),
}

/// The sending side.
pub(crate) enum FrameTx {
    Stream {
        w: BoxWrite,
        codec: FrameCodec,
        buf: BytesMut,
    },
    Local(mpsc::Sender<Frame>),
}

/// The two halves of a transport.
pub(crate) fn stream(r: BoxRead, w: BoxWrite, max_frame_size: usize) -> (FrameRx, FrameTx) {
    let codec = FrameCodec::new(max_frame_size);
    (
        FrameRx::Stream(FramedRead::new(r, codec.clone())),
        FrameTx::Stream {
            w,
            codec,
            buf: BytesMut::with_capacity(64 * 1024),
        },
    )
}

/// The two halves of an in-process link.
pub(crate) fn local(link: LocalLink) -> (FrameRx, FrameTx) {
    (FrameRx::Local(link.rx), FrameTx::Local(link.tx))
}

/// The client's error for a codec failure on the receiving side.
pub(crate) fn codec_error(e: CodecError) -> Error {
    match e {
        CodecError::Io(e) => Error::ConnectionLost {
            code: None,
            reason: format!("read failed: {e}"),
        },
        e => Error::Protocol(format!("undecodable input from the broker: {e}")),
    }
}

impl FrameRx {
    /// The next frame; `None` when the peer has closed the transport.
    pub(crate) async fn recv(&mut self) -> Option<Result<Frame, CodecError>> {
        match self {
            FrameRx::Stream(f) => f.next().await,
            FrameRx::Local(rx) => rx.recv().await.map(Ok),
        }
    }
}

impl FrameTx {
    /// Lowers the encoding limit to what the broker accepts.
    pub(crate) fn set_max_frame_size(&mut self, max: usize) {
        if let FrameTx::Stream { codec, .. } = self {
            *codec = FrameCodec::new(max);
        }
    }

    /// Writes `frames` (draining the vector): one `write_all` for a stream transport. A frame over the
    /// size limit is dropped with a warning (callers check sizes before queueing, so this is a bug).
    pub(crate) async fn write_batch(&mut self, frames: &mut Vec<Frame>) -> Result<(), Error> {
        match self {
            FrameTx::Stream { w, codec, buf } => {
                buf.clear();
                for f in frames.drain(..) {
                    if let Err(e) = codec.encode(&f, buf) {
                        tracing::warn!(frame = ?f.frame_type(), error = %e, "frame not sent");
                    }
                }
                if buf.is_empty() {
                    return Ok(());
                }
                w.write_all(buf).await.map_err(|e| Error::ConnectionLost {
                    code: None,
                    reason: format!("write failed: {e}"),
                })?;
                w.flush().await.map_err(|e| Error::ConnectionLost {
                    code: None,
                    reason: format!("flush failed: {e}"),
                })?;
                // Keep the buffer's memory bounded after an unusually large batch.
                if buf.capacity() > 4 * 1024 * 1024 {
                    *buf = BytesMut::with_capacity(64 * 1024);
                }
                Ok(())
            }
            FrameTx::Local(tx) => {
                for f in frames.drain(..) {
                    tx.send(f).await.map_err(|_| Error::ConnectionLost {
                        code: None,
                        reason: "the in-process broker closed the link".into(),
                    })?;
                }
                Ok(())
            }
        }
    }

    /// Ends the sending direction (TCP FIN; for a local link, dropping the sender does it).
    pub(crate) async fn shutdown(&mut self) {
        if let FrameTx::Stream { w, .. } = self {
            let _ = w.shutdown().await;
        }
    }
}
