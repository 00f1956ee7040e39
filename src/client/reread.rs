//! Reading again what a receiver lost. When a receiver restarts, or drops a session, the
//! chunks it had acknowledged since its journal's last flush, and the small files it had not
//! yet made durable, are gone from it and from the sender's memory. A destination's
//! re-reader reads them again from the source, one request at a time, each chunk holding its
//! share of the memory budget as the pipeline's own chunks do.

use std::ops::Range;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::pipeline::budget::Budget;
use crate::pipeline::chunk::Chunk;
use crate::pipeline::hash::digest;
use crate::source::read::{open_again, read_again};
use crate::source::walk::Entry;

/// What to read again.
#[derive(Debug)]
pub(crate) enum What {
    /// These chunks of a large file.
    Chunks(Vec<Range<u64>>),
    /// A whole small file, which must still hash to `root`.
    Whole { root: [u8; 32] },
}

/// A request to the re-reader.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) file: u64,
    /// The file's begin this serves (see `files.rs`): results for an older one are dropped.
    pub(crate) epoch: u64,
    pub(crate) entry: Arc<Entry>,
    /// The size the receiver was told.
    pub(crate) size: u64,
    pub(crate) chunk_len: u64,
    pub(crate) what: What,
    /// Cancelled when the file no longer needs it (begun again, done, failed).
    pub(crate) cancel: CancellationToken,
}

/// What the re-reader hands back.
#[derive(Debug)]
pub(crate) enum Reread {
    /// A chunk read again, hashed, holding its budget.
    Chunk { epoch: u64, chunk: Arc<Chunk> },
    /// A small file read again (it still has its root), as one chunk.
    Whole { chunk: Arc<Chunk> },
    /// The source cannot give it again.
    Failed {
        file: u64,
        epoch: u64,
        error: String,
    },
}

/// Serves requests one at a time until either channel closes.
pub(crate) async fn run(
    mut requests: mpsc::Receiver<Request>,
    results: mpsc::Sender<Reread>,
    budget: Budget,
) {
    while let Some(request) = requests.recv().await {
        let (file, epoch) = (request.file, request.epoch);
        if let Err(error) = serve(request, &results, &budget).await {
            let failed = Reread::Failed { file, epoch, error };
            if results.send(failed).await.is_err() {
                return;
            }
        }
    }
}

/// Reads what `request` asks for. `Ok` also when cancelled or when nobody listens any more.
async fn serve(
    request: Request,
    results: &mpsc::Sender<Reread>,
    budget: &Budget,
) -> Result<(), String> {
    let entry = Arc::clone(&request.entry);
    let size = request.size;
    let opened = tokio::task::spawn_blocking(move || open_again(&entry.input, size))
        .await
        .map_err(|e| e.to_string())?;
    let file = Arc::new(opened.map_err(|e| e.to_string())?);
    let ranges = match &request.what {
        What::Chunks(ranges) => ranges.clone(),
        What::Whole { .. } => vec![Range { start: 0, end: 1 }],
    };
    for index in ranges.into_iter().flatten() {
        let offset = index.saturating_mul(request.chunk_len);
        if offset >= size && size > 0 {
            return Err(format!("chunk {index} is past the end of the file"));
        }
        // Bounded by the chunk length, a u32.
        let len = (size - offset.min(size)).min(request.chunk_len) as usize;
        let permit = tokio::select! {
            () = request.cancel.cancelled() => return Ok(()),
            permit = budget.acquire(len) => permit,
        };
        let (file, path) = (
            Arc::clone(&file),
            request.entry.input.display_path().to_path_buf(),
        );
        let read = tokio::task::spawn_blocking(move || {
            let data = read_again(&file, &path, offset, len).map_err(|e| e.to_string())?;
            let digest = digest(offset, &data);
            Ok::<_, String>((data, digest))
        })
        .await
        .map_err(|e| e.to_string())??;
        let (data, digest) = read;
        let whole = match &request.what {
            What::Whole { root } => {
                if blake3::hash(&data).as_bytes() != root {
                    return Err("changed since it was read; not sent again".into());
                }
                true
            }
            What::Chunks(_) => false,
        };
        let chunk = Arc::new(Chunk {
            file: request.file,
            index,
            offset,
            data,
            digest,
            permit,
            release: false,
        });
        let result = if whole {
            Reread::Whole { chunk }
        } else {
            Reread::Chunk {
                epoch: request.epoch,
                chunk,
            }
        };
        if request.cancel.is_cancelled() || results.send(result).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}
