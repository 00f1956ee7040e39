//! What a [`Server`](crate::Server) tells a subscriber while it serves: connections that
//! came in, were refused or ended, and files put in place. For a front end (the Tauri
//! plugin's receiver, a status line), never for the server's own decisions.
//!
//! Events go through a bounded queue without waiting: a subscriber that falls behind misses
//! events (they are counted in [`ServerStatus::missed_events`](crate::ServerStatus)), and
//! never slows what the server receives.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use serde::Serialize;
use tokio::sync::mpsc;

/// Events the queue holds before new ones are counted as missed.
pub(crate) const QUEUE: usize = 1024;

/// One event of a serving [`Server`](crate::Server). Serialises as a JSON object tagged by
/// `event`, as [`Progress`](crate::Progress) does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ServerEvent {
    /// A sender proved the key and its connection joined a transfer.
    Connected {
        /// Where it came from.
        peer: SocketAddr,
    },
    /// A connection failed its handshake (a wrong key, another protocol version, a peer
    /// that is not a tidegate sender).
    Refused {
        /// Where it came from.
        peer: SocketAddr,
        /// Why, as the server's log says it.
        reason: String,
    },
    /// An authenticated connection ended.
    Disconnected {
        /// Where it came from.
        peer: SocketAddr,
        /// Why, when it did not end cleanly.
        error: Option<String>,
    },
    /// A file was verified, made durable and put in place.
    FileReceived {
        /// Its path relative to the served directory.
        path: String,
        /// Its length.
        bytes: u64,
    },
}

/// The server's side of the queue: set once, before serving, by `Server::subscribe`.
#[derive(Debug, Default)]
pub(crate) struct Events {
    queue: OnceLock<mpsc::Sender<ServerEvent>>,
    missed: AtomicU64,
}

impl Events {
    /// A new queue; `None` when one was made already.
    pub(crate) fn subscribe(&self) -> Option<mpsc::Receiver<ServerEvent>> {
        let (tx, rx) = mpsc::channel(QUEUE);
        self.queue.set(tx).ok().map(|()| rx)
    }

    /// Whether anyone listens: callers skip building an event's strings when not.
    pub(crate) fn on(&self) -> bool {
        self.queue.get().is_some_and(|q| !q.is_closed())
    }

    /// Queues `event`, or counts it as missed when the queue is full.
    pub(crate) fn tell(&self, event: ServerEvent) {
        if let Some(queue) = self.queue.get() {
            if let Err(mpsc::error::TrySendError::Full(_)) = queue.try_send(event) {
                self.missed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A file put in place at `target`, under the served directory `root`.
    pub(crate) fn received(&self, root: &Path, target: &Path, bytes: u64) {
        if self.on() {
            let path = target.strip_prefix(root).unwrap_or(target);
            self.tell(ServerEvent::FileReceived {
                path: path.to_string_lossy().into_owned(),
                bytes,
            });
        }
    }

    pub(crate) fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_counts_what_it_drops_and_never_waits() {
        let events = Events::default();
        events.tell(ServerEvent::FileReceived {
            path: "nobody listens".into(),
            bytes: 1,
        });
        assert_eq!(events.missed(), 0);
        let mut rx = events.subscribe().unwrap();
        assert!(events.subscribe().is_none(), "one subscriber");
        for i in 0..QUEUE as u64 + 10 {
            events.received(Path::new("/srv"), Path::new(&format!("/srv/d/{i}")), i);
        }
        assert_eq!(events.missed(), 10);
        assert_eq!(
            rx.try_recv().unwrap(),
            ServerEvent::FileReceived {
                path: "d/0".into(),
                bytes: 0
            }
        );
        drop(rx);
        assert!(!events.on());
    }

    #[test]
    fn events_serialise_tagged() {
        let e = ServerEvent::Disconnected {
            peer: "127.0.0.1:9".parse().unwrap(),
            error: None,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"event":"disconnected","peer":"127.0.0.1:9","error":null}"#
        );
    }
}
