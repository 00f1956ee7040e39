//! The commands JavaScript calls (`plugin:tidegate|…`). Each checks its arguments, starts a
//! job through the library, registers it in [`Jobs`], and returns at once; the job's task
//! sends its events and leaves [`Jobs`] when it ends.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Serialize;
use tauri::ipc::Channel;
use tauri::{AppHandle, Manager, Runtime, State};
use tidegate::protocol::handshake::Key;
use tidegate::{HashJob, Input, Server, ServerOptions, Transfer};
use tokio_util::sync::CancellationToken;

use crate::args::{Arg, HashOptions, Secret, SendOptions};
use crate::error::{Error, ErrorKind};
use crate::events::{HashEvent, HashedFile, ServeEvent, TransferEvent};
use crate::jobs::{Jobs, Kind, TransferInfo};

/// Every source must exist: a path typed wrong fails at once, not in the final report.
fn check_sources(sources: &[String]) -> Result<Vec<PathBuf>, Error> {
    if sources.is_empty() {
        return Err(Error::invalid("nothing to send: sources is empty"));
    }
    sources
        .iter()
        .map(|s| {
            let path = PathBuf::from(s);
            match std::fs::symlink_metadata(&path) {
                Ok(_) => Ok(path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::new(
                    ErrorKind::NotFound,
                    format!("{s}: no such file or directory"),
                )),
                Err(e) => Err(Error::new(ErrorKind::Io, format!("{s}: {e}"))),
            }
        })
        .collect()
}

/// Starts sending `sources` to every destination; returns the transfer's id at once.
#[tauri::command]
pub(crate) async fn send<R: Runtime>(
    app: AppHandle<R>,
    sources: Arg<Vec<String>>,
    destinations: Arg<Vec<String>>,
    options: Arg<Option<SendOptions>>,
    on_progress: Arg<Channel<TransferEvent>>,
) -> Result<u64, Error> {
    let (sources, destinations, channel) = (sources.0, destinations.0, on_progress.0);
    let options = options.0.unwrap_or_default().into_options()?;
    let paths = check_sources(&sources)?;
    let mut transfer = Transfer::new(paths, destinations.clone()).options(options);
    let progress = transfer.subscribe();
    let handle = transfer.start()?;
    let jobs = app.state::<Jobs>();
    let (id, live) = jobs.add(
        Kind::Transfer,
        handle.cancel_token(),
        sources.clone(),
        destinations.clone(),
    );
    let _ = channel.send(TransferEvent::Started {
        id,
        sources,
        destinations,
    });
    let ending = app.clone();
    let task = tauri::async_runtime::spawn(async move {
        crate::sending::drive(handle, progress, channel, live).await;
        ending.state::<Jobs>().remove(id);
    });
    jobs.set_task(id, task);
    Ok(id)
}

/// Cancels a transfer or a hash job. Its last event says what was done.
#[tauri::command]
pub(crate) async fn cancel(jobs: State<'_, Jobs>, id: Arg<u64>) -> Result<(), Error> {
    if jobs.cancel(id.0, &[Kind::Transfer, Kind::Hash]) {
        Ok(())
    } else {
        Err(Error::not_found("transfer or hash", id.0))
    }
}

/// The running transfers.
#[tauri::command]
pub(crate) async fn transfers(jobs: State<'_, Jobs>) -> Result<Vec<TransferInfo>, Error> {
    Ok(jobs.transfers())
}

/// Hashes `paths`; returns their roots once done (its `started` event carries the id that
/// `cancel` takes).
#[tauri::command]
pub(crate) async fn hash<R: Runtime>(
    app: AppHandle<R>,
    paths: Arg<Vec<String>>,
    options: Arg<Option<HashOptions>>,
    on_progress: Arg<Channel<HashEvent>>,
) -> Result<Vec<HashedFile>, Error> {
    let (paths, channel) = (paths.0, on_progress.0);
    if paths.is_empty() {
        return Err(Error::invalid("nothing to hash: paths is empty"));
    }
    let options = options.0.unwrap_or_default().into_options()?;
    let inputs = paths.iter().map(|p| Input::Path(p.into())).collect();
    let cancel = CancellationToken::new();
    let mut job = HashJob::new(inputs)
        .options(options)
        .cancel_token(cancel.clone());
    let progress = job.subscribe();
    let handle = job.start()?;
    let jobs = app.state::<Jobs>();
    let (id, _) = jobs.add(Kind::Hash, cancel, paths, Vec::new());
    let _ = channel.send(HashEvent::Started { id });
    let finished = crate::hashing::drive(handle, progress, channel).await;
    jobs.remove(id);
    match finished {
        HashEvent::Finished {
            cancelled: true, ..
        } => Err(Error::new(ErrorKind::Cancelled, "hashing was cancelled")),
        HashEvent::Finished { files, .. } => Ok(files),
        _ => Err(Error::new(ErrorKind::Io, "hashing ended without a result")),
    }
}

/// A started receiver.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Receiver {
    /// Its id, for `serveStop`.
    pub id: u64,
    /// The address it listens on (with the port picked, for port 0).
    pub address: String,
    /// The code phrase it made, when it was given no key: senders need it, so the app shows
    /// it to the user once. `None` when a key was given or `insecureNoAuth` was set.
    pub code_phrase: Option<String>,
}

/// Starts a receiver into `dir` on `listen` (default `127.0.0.1:0`). Without a key it makes
/// a code phrase and accepts only senders that have it; `insecure_no_auth` lets any sender in
/// (still encrypted).
#[tauri::command]
pub(crate) async fn serve_start<R: Runtime>(
    app: AppHandle<R>,
    dir: Arg<String>,
    listen: Arg<Option<String>>,
    key: Arg<Option<Secret>>,
    insecure_no_auth: Arg<Option<bool>>,
    on_event: Arg<Channel<ServeEvent>>,
) -> Result<Receiver, Error> {
    let listen = listen.0.unwrap_or_else(|| "127.0.0.1:0".into());
    let addr: SocketAddr = listen.parse().map_err(|_| {
        Error::invalid(format!(
            "listen {listen:?} is not IP:PORT (say 0.0.0.0:7878, or 127.0.0.1:0 for any port)"
        ))
    })?;
    if dir.0.is_empty() {
        return Err(Error::invalid("dir is empty"));
    }
    let mut options = ServerOptions::new(&dir.0);
    let mut code_phrase = None;
    match (&key.0, insecure_no_auth.0.unwrap_or(false)) {
        (Some(_), true) => {
            return Err(Error::invalid(
                "give either a key or insecureNoAuth, not both",
            ))
        }
        (Some(key), false) => options.key = key.key()?,
        (None, true) => {}
        (None, false) => {
            let phrase = code_phrase_now()?;
            options.key = Key::from_passphrase(&phrase);
            code_phrase = Some(phrase);
        }
    }
    let mut server = Server::bind(addr, options).await.map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("cannot serve {} on {listen}: {e}", dir.0),
        )
    })?;
    let address = server
        .local_addr()
        .map_err(|e| Error::new(ErrorKind::Io, e.to_string()))?
        .to_string();
    let events = server
        .subscribe()
        .ok_or_else(|| Error::new(ErrorKind::Io, "the receiver's events were taken"))?;
    let status = server.status();
    let jobs = app.state::<Jobs>();
    let (id, _) = jobs.add(
        Kind::Receiver,
        server.shutdown_token(),
        vec![dir.0],
        vec![address.clone()],
    );
    let serving = tauri::async_runtime::spawn(server.serve());
    let channel = on_event.0;
    let ending = app.clone();
    let task = tauri::async_runtime::spawn(async move {
        crate::receiving::drive(serving, events, status, channel).await;
        ending.state::<Jobs>().remove(id);
    });
    jobs.set_task(id, task);
    Ok(Receiver {
        id,
        address,
        code_phrase,
    })
}

fn code_phrase_now() -> Result<String, Error> {
    tidegate::protocol::handshake::code_phrase().map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("cannot make a code phrase (no randomness from the system): {e}"),
        )
    })
}

/// Stops a receiver gracefully; its `stopped` event follows.
#[tauri::command]
pub(crate) async fn serve_stop(jobs: State<'_, Jobs>, id: Arg<u64>) -> Result<(), Error> {
    if jobs.cancel(id.0, &[Kind::Receiver]) {
        Ok(())
    } else {
        Err(Error::not_found("receiver", id.0))
    }
}
