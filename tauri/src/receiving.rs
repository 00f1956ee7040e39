//! A receiver started with `serveStart`: the library's [`ServerEvent`]s gathered into
//! [`ServeEvent::Activity`] at most ten a second (a few listed, the rest counted), then
//! `stopped` when the server has shut down.

use std::time::Instant;

use tauri::ipc::Channel;
use tidegate::{ServerEvent, ServerStatus};
use tokio::sync::mpsc;

use crate::args::EVENT_INTERVAL;
use crate::error::{Error, ErrorKind};
use crate::events::{ReceivedFile, Refusal, ServeEvent};

/// Items listed per kind in one event; the rest are counted in `unlisted`.
const LISTED: usize = 32;

#[derive(Default)]
struct Activity {
    connections: u64,
    connected: Vec<String>,
    refused: Vec<Refusal>,
    received: Vec<ReceivedFile>,
    files_total: u64,
    bytes_total: u64,
    unlisted: u64,
    dirty: bool,
}

impl Activity {
    fn take(&mut self, event: ServerEvent) {
        self.dirty = true;
        match event {
            ServerEvent::Connected { peer } => {
                self.connections += 1;
                list(&mut self.connected, peer.to_string(), &mut self.unlisted);
            }
            ServerEvent::Disconnected { .. } => {
                self.connections = self.connections.saturating_sub(1);
            }
            ServerEvent::Refused { peer, reason } => {
                let peer = peer.to_string();
                list(
                    &mut self.refused,
                    Refusal { peer, reason },
                    &mut self.unlisted,
                );
            }
            ServerEvent::FileReceived { path, bytes } => {
                self.files_total += 1;
                self.bytes_total += bytes;
                list(
                    &mut self.received,
                    ReceivedFile { path, bytes },
                    &mut self.unlisted,
                );
            }
            _ => {}
        }
    }

    fn event(&mut self, missed: u64) -> ServeEvent {
        self.dirty = false;
        ServeEvent::Activity {
            connections: self.connections,
            connected: std::mem::take(&mut self.connected),
            refused: std::mem::take(&mut self.refused),
            received: std::mem::take(&mut self.received),
            files_total: self.files_total,
            bytes_total: self.bytes_total,
            unlisted: std::mem::take(&mut self.unlisted) + missed,
        }
    }
}

fn list<T>(to: &mut Vec<T>, item: T, unlisted: &mut u64) {
    if to.len() < LISTED {
        to.push(item);
    } else {
        *unlisted += 1;
    }
}

/// Runs until the server has stopped; its last event is `stopped`.
pub(crate) async fn drive(
    serving: tauri::async_runtime::JoinHandle<std::io::Result<()>>,
    mut events: mpsc::Receiver<ServerEvent>,
    status: ServerStatus,
    channel: Channel<ServeEvent>,
) {
    let mut activity = Activity::default();
    let mut last_sent: Option<Instant> = None;
    let mut missed_told = 0;
    let mut serving = serving;
    let mut open = true;
    let ended = loop {
        let due = last_sent.map_or_else(Instant::now, |t| t + EVENT_INTERVAL);
        tokio::select! {
            event = events.recv(), if open => match event {
                Some(event) => activity.take(event),
                None => open = false,
            },
            () = tokio::time::sleep_until(due.into()), if activity.dirty => {}
            ended = &mut serving => break ended,
        }
        if activity.dirty && Instant::now() >= due {
            let missed = status.missed_events();
            let _ = channel.send(activity.event(missed.saturating_sub(missed_told)));
            missed_told = missed;
            last_sent = Some(Instant::now());
        }
    };
    while let Ok(event) = events.try_recv() {
        activity.take(event);
    }
    if activity.dirty {
        let _ = channel.send(activity.event(0));
    }
    let error = match ended {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(Error::new(
            ErrorKind::Io,
            format!("the receiver stopped: {e}"),
        )),
        Err(e) => Some(Error::new(
            ErrorKind::Io,
            format!("the receiver stopped: {e}"),
        )),
    };
    let _ = channel.send(ServeEvent::Stopped { error });
}
