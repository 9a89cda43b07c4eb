//! The in-process link: a pair of bounded frame channels standing in for a TCP connection.
//!
//! An embedded broker hands out one [`LocalLink`] per connection; the client drives it exactly as it
//! drives a socket, minus the encoding. Channels are bounded, so a slow side pushes back on the other
//! as TCP would. Only `tokio::sync` is used here: no I/O, no runtime.

use tokio::sync::mpsc;

use crate::Frame;

/// Frames buffered in each direction of a local link.
pub const LOCAL_LINK_CAPACITY: usize = 1024;

/// One end of an in-process connection.
#[derive(Debug)]
pub struct LocalLink {
    /// Frames to the other end.
    pub tx: mpsc::Sender<Frame>,
    /// Frames from the other end.
    pub rx: mpsc::Receiver<Frame>,
}

/// Two connected ends: what one sends, the other receives.
pub fn local_link_pair(capacity: usize) -> (LocalLink, LocalLink) {
    let (a_tx, b_rx) = mpsc::channel(capacity);
    let (b_tx, a_rx) = mpsc::channel(capacity);
    (
        LocalLink { tx: a_tx, rx: a_rx },
        LocalLink { tx: b_tx, rx: b_rx },
    )
}
