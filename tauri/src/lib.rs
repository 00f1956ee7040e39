//! tauri-plugin-tidegate: tidegate's transfers, hashing and receiver as Tauri 2 commands.
//!
//! Register it with `.plugin(tauri_plugin_tidegate::init())` and grant `tidegate:default`
//! (send, cancel, transfers, hash) and, for an app that receives, `tidegate:receive`
//! (serveStart, serveStop) in a capability. The JavaScript API is in `guest-js/`.
//!
//! - `commands.rs`: the commands, which check arguments and start jobs.
//! - `args.rs`: argument parsing into the library's options, and the `invalidArgument` error.
//! - [`events`]: what each job sends through its channel.
//! - `sending.rs`, `hashing.rs`, `receiving.rs`: each job's events, rate-limited.
//! - [`jobs`]: the managed state of running jobs.
//! - [`error`]: the `{ kind, message }` errors.
//!
//! The plugin is a thin layer: everything it does goes through `tidegate`'s library API.
#![deny(missing_docs)]

mod args;
mod commands;
pub mod error;
pub mod events;
mod hashing;
pub mod jobs;
mod receiving;
mod sending;

use tauri::plugin::{Builder, TauriPlugin};
use tauri::{Manager, RunEvent, Runtime};

pub use error::{Error, ErrorKind};
pub use jobs::Jobs;

/// The plugin, to register with `tauri::Builder::plugin`.
pub fn init<R: Runtime>() -> TauriPlugin<R> {
    Builder::new("tidegate")
        .invoke_handler(tauri::generate_handler![
            commands::send,
            commands::cancel,
            commands::transfers,
            commands::hash,
            commands::serve_start,
            commands::serve_stop,
        ])
        .setup(|app, _api| {
            app.manage(Jobs::default());
            Ok(())
        })
        .on_event(|app, event| {
            // Transfers stop and receivers shut down gracefully with the app.
            if let RunEvent::Exit = event {
                app.state::<Jobs>().cancel_all();
            }
        })
        .build()
}
