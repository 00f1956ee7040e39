//! A `hash` job: the library's [`Progress`] stream as [`HashEvent`]s at most ten a second,
//! and the roots in the final event.

use tauri::ipc::Channel;
use tidegate::{HashHandle, Progress};
use tokio::sync::mpsc;

use crate::error::{Error, ErrorKind};
use crate::events::{HashEvent, HashedFile};

/// Runs until the job ends; its last event is `finished`, also returned.
pub(crate) async fn drive(
    handle: HashHandle,
    mut progress: mpsc::Receiver<Progress>,
    channel: Channel<HashEvent>,
) -> HashEvent {
    // The library sends byte counts at most once per `EVENT_INTERVAL`; file events are not
    // passed on.
    while let Some(event) = progress.recv().await {
        if let Progress::Bytes {
            done_bytes,
            total_bytes,
            files_done,
            elapsed_ms,
        } = event
        {
            let _ = channel.send(HashEvent::Progress {
                done_bytes,
                total_bytes,
                files_done,
                elapsed_ms,
            });
        }
    }
    let finished = match handle.wait().await {
        Ok(report) => HashEvent::Finished {
            cancelled: report.cancelled,
            files: report
                .files
                .into_iter()
                .map(|f| {
                    let path = f.input.to_string();
                    let (blake3, error) = match f.result {
                        Ok(root) => (Some(root.to_hex().to_string()), None),
                        Err(e) => (None, Some(Error::new(ErrorKind::Io, e.to_string()))),
                    };
                    HashedFile {
                        path,
                        bytes: f.bytes,
                        blake3,
                        error,
                    }
                })
                .collect(),
        },
        Err(e) => HashEvent::Finished {
            cancelled: false,
            files: vec![HashedFile {
                path: String::new(),
                bytes: 0,
                blake3: None,
                error: Some(Error::new(ErrorKind::Io, format!("hashing stopped: {e}"))),
            }],
        },
    };
    let _ = channel.send(finished.clone());
    finished
}
