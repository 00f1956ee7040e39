//! Generates the plugin's permissions (one `allow-`/`deny-` pair per command) from the
//! command list, as every Tauri 2 plugin does.

const COMMANDS: &[&str] = &[
    "send",
    "cancel",
    "transfers",
    "hash",
    "serve_start",
    "serve_stop",
];

fn main() {
    tauri_plugin::Builder::new(COMMANDS).build();
}
