//! Progress bars on stderr, drawn from the library's [`Progress`] events.
//!
//! The bar is shown only when stderr is a terminal and the work is large enough to be worth
//! watching; it redraws at most 10 times a second. It is a view, not a log.

use std::future::Future;
use std::io::IsTerminal;
use std::pin::Pin;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tidegate::{ConnectionState, Progress};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Inputs smaller than this finish before a bar would be readable.
const SHOW_ABOVE_BYTES: u64 = 64 * 1024 * 1024;

/// Whether to draw a bar: a terminal on stderr, not asked to be quiet, and enough bytes
/// (`None`: unknown size, such as stdin, which may be large).
pub(crate) fn wanted(disabled: bool, total_bytes: Option<u64>) -> bool {
    !disabled
        && std::io::stderr().is_terminal()
        && total_bytes.is_none_or(|t| t >= SHOW_ABOVE_BYTES)
}

const WITH_TOTAL: &str =
    "{wide_msg}\n[{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}";
const WITHOUT_TOTAL: &str = "{wide_msg}\n[{elapsed_precise}] {spinner} {bytes} {bytes_per_sec}";

fn style(bar: &ProgressBar, template: &str) {
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
}

/// A total found while the work goes on (objects' sizes looked up in their store).
pub(crate) type LaterTotal = Pin<Box<dyn Future<Output = Option<u64>> + Send>>;

/// Draws a bytes bar (with rate and ETA) and the current file until the events end. Without
/// a total, a spinner with bytes and rate, which becomes a bar when an event or `later`
/// brings one (a transfer's total comes once its sources are counted).
pub(crate) fn spawn_bar(
    mut events: mpsc::Receiver<Progress>,
    total_bytes: Option<u64>,
    mut later: Option<LaterTotal>,
) -> JoinHandle<()> {
    let bar = ProgressBar::with_draw_target(total_bytes, ProgressDrawTarget::stderr_with_hz(10));
    style(
        &bar,
        if total_bytes.is_some() {
            WITH_TOTAL
        } else {
            WITHOUT_TOTAL
        },
    );
    let set_total = |bar: &ProgressBar, total: u64| {
        if bar.length().is_none() {
            bar.set_length(total);
            style(bar, WITH_TOTAL);
        }
    };
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                event = events.recv() => event,
                total = async { later.as_mut()?.await }, if later.is_some() => {
                    later = None;
                    if let Some(total) = total {
                        set_total(&bar, total);
                    }
                    continue;
                }
            };
            let Some(event) = event else { break };
            match event {
                Progress::FileStarted { path, .. } => bar.set_message(path),
                Progress::Bytes {
                    done_bytes,
                    total_bytes,
                    ..
                } => {
                    if let Some(total) = total_bytes {
                        set_total(&bar, total);
                    }
                    bar.set_position(done_bytes);
                }
                Progress::Connection {
                    address,
                    state: ConnectionState::Unreachable,
                    error,
                    ..
                } => bar.set_message(format!(
                    "waiting for {address}: {}",
                    error.unwrap_or_default()
                )),
                _ => {}
            }
        }
        bar.finish_and_clear();
    })
}
