//! Embeds `ui/`, the capability and the window configuration (`tauri.conf.json`).

fn main() {
    tauri_build::build();
}
