//! Progress bars on stderr, drawn from the library's [`Progress`] events.
//!
//! The bar is shown only when stderr is a terminal and the work is large enough to be worth
//! watching; it redraws at most 10 times a second. It is a view, not a log.

use std::io::IsTerminal;

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

/// Draws a bytes bar (with rate and ETA) and the current file until the events end. Without
/// a total, a spinner with bytes and rate, which becomes a bar when an event brings one
/// (a transfer's total comes once its sources are counted).
pub(crate) fn spawn_bar(
    mut events: mpsc::Receiver<Progress>,
    total_bytes: Option<u64>,
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
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                Progress::FileStarted { path, .. } => bar.set_message(path),
                Progress::Bytes {
                    done_bytes,
                    total_bytes,
                    ..
                } => {
                    if let (Some(total), None) = (total_bytes, bar.length()) {
                        bar.set_length(total);
                        style(&bar, WITH_TOTAL);
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
