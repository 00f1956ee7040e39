#!/usr/bin/env bash
# Peak RSS of the example app's own process (VmHWM, printed by the app in smoke mode), under
# Xvfb: once idle (what WebKit and GTK take with the window open), once sending a generated
# file of SIZE bytes (default 2 GiB) to a receiver in the same process, through its UI.
# Usage: tauri/examples/desktop/measure-rss.sh [SIZE]
set -euo pipefail
cd "$(dirname "$0")/../../.."
size=${1:-$((2 << 30))}
cargo build --release -p tidegate-desktop >/dev/null
app=target/release/tidegate-desktop
echo "idle:     $(TIDEGATE_SMOKE=idle xvfb-run -a "$app" | grep '^smoke:')"
echo "transfer: $(TIDEGATE_SMOKE=1 TIDEGATE_SMOKE_BYTES=$size xvfb-run -a "$app" | grep '^smoke:')"
