//! The passes of a transfer: one dispatcher per destination fed from the pipeline's events
//! (each chunk's `Bytes` shared by all of them), and the redo pass that reads again a resumed
//! file whose root did not verify.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::tracker::Tracker;
use super::{Authentication, DestinationReport, Report, TransferOptions};
use crate::client::connection::DialOptions;
use crate::client::dispatch::{DestEvent, Dispatch, Note, Outcome};
use crate::pipeline::budget::Budget;
use crate::pipeline::hash::HashPool;
use crate::pipeline::skip::Skips;
use crate::pipeline::Pipeline;
use crate::progress::Progress;
use crate::protocol::handshake::random;
use crate::source::walk::{Entry, Tally};

/// Whether a destination is an object store (`s3://`).
fn is_object_store(address: &str) -> bool {
    address.starts_with("s3://")
}

/// Events a destination may queue ahead of its dispatcher.
const DEST_QUEUE: usize = 64;

struct Destination {
    /// Its place in the transfer's list of destinations.
    index: usize,
    tx: Option<mpsc::Sender<DestEvent>>,
    task: JoinHandle<Outcome>,
}

/// What every pass of a transfer shares.
pub(super) struct Shared {
    pub(super) options: TransferOptions,
    pub(super) pool: HashPool,
    pub(super) budget: Budget,
    pub(super) cancel: CancellationToken,
}

pub(super) async fn run(
    pipeline: Pipeline<Entry>,
    addresses: Vec<String>,
    shared: Shared,
    session: [u8; 16],
    progress: Option<mpsc::Sender<Progress>>,
    tally: Option<Tally>,
    walk_errors: Arc<Mutex<Vec<(String, String)>>>,
) -> Report {
    let started = Instant::now();
    let mut state = Tracker::new(progress, tally, started, &shared.options, addresses.clone());
    let everyone: Vec<usize> = (0..addresses.len()).collect();
    let mut outcomes = pass(
        pipeline, &addresses, &everyone, session, &shared, &mut state, false,
    )
    .await;

    // The redo pass (like rsync's): a file whose root hash did not verify at the receiver
    // was sent from a partial file that no longer matches the source, or damaged on the way.
    // The receiver dropped what it had, so reading the file again sends it whole. Once per
    // destination, and only once: a file that fails again is reported.
    for (dest, first) in outcomes.iter_mut().enumerate() {
        let redo = std::mem::take(&mut first.redo);
        if redo.is_empty() {
            continue;
        }
        if let Some(fatal) = &first.fatal {
            // The destination is gone: no point dialling it again.
            let why = format!("resumed data did not verify, not sent again: {fatal}");
            first
                .files_failed
                .extend(redo.into_iter().map(|f| (f, why.clone())));
            continue;
        }
        let outcome = redo_pass(&redo, &addresses, dest, &shared, &mut state).await;
        first.files_done += outcome.files_done;
        first.files_failed.extend(outcome.files_failed);
        first.bytes_acked += outcome.bytes_acked;
        first.bytes_resumed += outcome.bytes_resumed;
        first.bytes_resent += outcome.bytes_resent;
        first.reconnects += outcome.reconnects;
        first.restarts += outcome.restarts;
        first.already_there += outcome.already_there;
        if first.fatal.is_none() {
            first.fatal = outcome.fatal;
            first.failure = outcome.failure;
        }
    }

    let name = |f: u64| state.path(f);
    let authentication = |address: &str| {
        if is_object_store(address) {
            Authentication::Credentials
        } else if shared.options.key.is_anonymous() {
            Authentication::None
        } else {
            Authentication::Passphrase
        }
    };
    let reports = addresses
        .into_iter()
        .zip(outcomes)
        .map(|(address, outcome)| DestinationReport {
            authentication: authentication(&address),
            address,
            files_done: outcome.files_done,
            failed: outcome
                .files_failed
                .iter()
                .map(|(f, why)| (name(*f), why.clone()))
                .collect(),
            bytes: outcome.bytes_acked,
            resumed: outcome.bytes_resumed,
            resent: outcome.bytes_resent,
            reconnects: outcome.reconnects,
            restarts: outcome.restarts,
            error: outcome.fatal,
            failure: outcome.failure,
            tls: outcome.tls,
            already_there: outcome.already_there,
            notes: outcome.notes,
        })
        .collect();
    state.tick(true).await;
    let mut source_errors =
        std::mem::take(&mut *walk_errors.lock().unwrap_or_else(PoisonError::into_inner));
    source_errors.extend(state.source_failures());
    let bytes = state.read_bytes;
    Report {
        files: state.into_file_reports(),
        source_errors,
        destinations: reports,
        bytes,
        elapsed_ms: started.elapsed().as_millis() as u64,
        cancelled: shared.cancel.is_cancelled(),
    }
}

/// Sends `redo` (file numbers of the first pass) to destination `dest` again, in a session
/// of their own.
async fn redo_pass(
    redo: &[u64],
    addresses: &[String],
    dest: usize,
    shared: &Shared,
    state: &mut Tracker,
) -> Outcome {
    let mut files = Vec::with_capacity(redo.len());
    let mut unreadable = Vec::new();
    for &f in redo {
        match state.entry(f) {
            Some(entry) => files.push((f, (*entry).clone())),
            None => unreadable.push((f, "root hash mismatch; cannot be read again".to_string())),
        }
    }
    files.sort_by_key(|(f, _)| *f);
    let fail_all = |why: String| Outcome {
        files_failed: redo.iter().map(|&f| (f, why.clone())).collect(),
        ..Outcome::default()
    };
    if shared.cancel.is_cancelled() {
        return fail_all("cancelled".into());
    }
    if files.is_empty() {
        return Outcome {
            files_failed: unreadable,
            ..Outcome::default()
        };
    }
    tracing::info!(
        addr = %addresses[dest],
        files = files.len(),
        "sending files again whose resumed data did not verify"
    );
    let pipeline = Pipeline::spawn_numbered(
        files.into_iter(),
        &shared.options.pipeline,
        shared.pool.clone(),
        shared.budget.clone(),
        &shared.cancel,
    );
    let (pipeline, session) = match (pipeline, random::<16>()) {
        (Ok(pipeline), Ok(session)) => (pipeline, session),
        (Err(e), _) | (_, Err(e)) => return fail_all(format!("cannot send it again: {e}")),
    };
    let mut outcome = pass(pipeline, addresses, &[dest], session, shared, state, true)
        .await
        .swap_remove(dest);
    // Only once: failing again (a journal written meanwhile by someone else) is a failure.
    let again = std::mem::take(&mut outcome.redo);
    outcome.files_failed.extend(
        again
            .into_iter()
            .map(|f| (f, "root hash mismatch, also when sent again".to_string())),
    );
    outcome.files_failed.extend(unreadable);
    outcome
}

/// Runs `pipeline` to the destinations `targets` (indices into `addresses`) until every
/// file is confirmed or failed. Returns one outcome per address (empty for those not in
/// `targets`). `redo`: the files are sent again because their root did not match what the
/// destination had.
async fn pass(
    mut pipeline: Pipeline<Entry>,
    addresses: &[String],
    targets: &[usize],
    session: [u8; 16],
    shared: &Shared,
    state: &mut Tracker,
    redo: bool,
) -> Vec<Outcome> {
    let options = &shared.options;
    let cancel = &shared.cancel;
    let (note_tx, mut notes) = mpsc::channel::<(usize, Note)>(256);
    let chunk_len = options.pipeline.chunk_size.bytes() as u32;
    let mut destinations = Vec::new();
    for &index in targets {
        let (tx, input) = mpsc::channel(DEST_QUEUE);
        #[cfg(feature = "s3")]
        if let Ok(target) = crate::objstore::S3Target::parse(&addresses[index]) {
            let upload = crate::objstore::upload::Upload {
                target,
                options: options.s3.clone(),
                retry_for: options.retry_for,
                connect_timeout: options.connect_timeout,
                chunk_len: u64::from(chunk_len),
                budget: options.pipeline.memory_bytes,
                input,
                notes: note_tx.clone(),
                dest: index,
                cancel: cancel.child_token(),
                force: redo,
            };
            destinations.push(Destination {
                index,
                tx: Some(tx),
                task: tokio::spawn(upload.run()),
            });
            continue;
        }
        let _ = redo;
        let dispatch = Dispatch {
            params: DialOptions {
                addr: addresses[index].clone(),
                key: options.key.clone(),
                session,
                connect_timeout: options.connect_timeout,
                reply_timeout: options.reply_timeout,
                retry_for: options.retry_for,
                max_in_flight: 64,
            },
            streams: options.streams,
            chunk_len,
            input,
            notes: note_tx.clone(),
            dest: index,
            cancel: cancel.child_token(),
            budget: shared.budget.clone(),
        };
        destinations.push(Destination {
            index,
            tx: Some(tx),
            task: tokio::spawn(dispatch.run()),
        });
    }
    drop(note_tx);

    let mut refusals = Refusals {
        skips: pipeline.skips(),
        live: destinations.len(),
        by_file: BTreeMap::new(),
    };
    let mut pipeline_open = true;
    // One waiter on the token for the whole loop, not one made and dropped per event.
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        let owed = state.tick_owed();
        tokio::select! {
            biased;
            () = &mut cancelled => break,
            note = notes.recv() => match note {
                Some((dest, note)) => {
                    refusals.observe(&note);
                    state.on_note(dest, note).await;
                }
                None => break,
            },
            // The count the rate limit held back, sent even if nothing follows it (a stall).
            () = crate::progress::sleep_until(owed), if owed.is_some() => state.tick(false).await,
            event = pipeline.next(), if pipeline_open => {
                let Some(event) = event else {
                    pipeline_open = false;
                    for d in &mut destinations {
                        d.tx = None; // input ends; dispatchers finish up
                    }
                    continue;
                };
                let outgoing = state.on_event(event).await;
                if let Some(out) = outgoing {
                    for d in &mut destinations {
                        let Some(tx) = &d.tx else { continue };
                        // Backpressure: a slow destination makes us wait here. Its notes
                        // must still be drained meanwhile, or it could block on them while
                        // we block on it.
                        let sent = loop {
                            tokio::select! {
                                biased;
                                () = &mut cancelled => break false,
                                note = notes.recv() => match note {
                                    Some((dest, note)) => {
                                        refusals.observe(&note);
                                        state.on_note(dest, note).await;
                                    }
                                    None => break false,
                                },
                                permit = tx.reserve() => match permit {
                                    Ok(permit) => {
                                        permit.send(out.clone());
                                        break true;
                                    }
                                    Err(_) => break false,
                                },
                            }
                        };
                        if !sent {
                            d.tx = None; // that destination has ended (failed)
                            refusals.lost_destination();
                        }
                    }
                }
            }
        }
    }
    drop(pipeline);
    let mut outcomes: Vec<Outcome> = addresses.iter().map(|_| Outcome::default()).collect();
    for d in destinations {
        drop(d.tx);
        outcomes[d.index] = d.task.await.unwrap_or_default();
    }
    outcomes
}

/// Which live destinations refused each file being read, so that a file no live destination
/// will take is no longer read: a refusal (a bad path, a limit, a full disk) is final for that
/// destination, and the dispatchers already drop its chunks.
struct Refusals {
    skips: Skips,
    /// Destinations of this pass that have not ended.
    live: usize,
    /// Refusals so far of files no destination confirmed yet. Only the file being read can
    /// still be skipped, so the oldest entries (say, of a file one destination refused after
    /// another had delivered it) are dropped past `REFUSALS_KEPT`.
    by_file: BTreeMap<u64, usize>,
}

/// Files whose refusals are counted at most.
const REFUSALS_KEPT: usize = 1024;

impl Refusals {
    fn observe(&mut self, note: &Note) {
        match note {
            Note::Failed { file, .. } => {
                let refused = self.by_file.entry(*file).or_insert(0);
                *refused += 1;
                if *refused >= self.live {
                    self.by_file.remove(file);
                    self.skips.skip(*file);
                } else if self.by_file.len() > REFUSALS_KEPT {
                    self.by_file.pop_first();
                }
            }
            // Delivered somewhere: it was read to the end anyway.
            Note::Done { file } => {
                self.by_file.remove(file);
            }
            _ => {}
        }
    }

    /// A destination ended (failed as a whole): files every remaining one refused are not
    /// read further.
    fn lost_destination(&mut self) {
        self.live = self.live.saturating_sub(1);
        let live = self.live;
        let skips = &self.skips;
        self.by_file.retain(|&file, refused| {
            let all = *refused >= live;
            if all {
                skips.skip(file);
            }
            !all
        });
    }
}
