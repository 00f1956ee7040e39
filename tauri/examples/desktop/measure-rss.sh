#!/usr/bin/env bash
# Peak RSS of the example app's own process (VmHWM, printed by the app in smoke mode), under
# Xvfb: once idle (what WebKit and GTK take with the window open); once sending 1 MiB through
# its UI (the same, plus the code a transfer and its IPC messages page in); once sending a
# generated file of SIZE bytes (default 2 GiB). The receiver is a `tidegate serve` of its own
# process, so that the app's memory is the sender's alone (default budget: 64 MiB).
# Usage: tauri/examples/desktop/measure-rss.sh [SIZE]
set -euo pipefail
cd "$(dirname "$0")/../../.."
size=${1:-$((2 << 30))}
profile=${PROFILE:-release}
flag=$([ "$profile" = release ] && echo --release || true)
cargo build $flag -p tidegate-desktop -p tidegate >/dev/null
app=target/$profile/tidegate-desktop
inbox=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
target/$profile/tidegate serve --dir "$inbox" --listen 127.0.0.1:$port 2>/dev/null &
serve=$!
trap 'kill $serve 2>/dev/null; rm -rf "$inbox"' EXIT
sleep 1
echo "idle:     $(TIDEGATE_SMOKE=idle xvfb-run -a "$app" | grep '^smoke:')"
smoke() {
    TIDEGATE_SMOKE=1 TIDEGATE_SMOKE_BYTES=$1 TIDEGATE_SMOKE_TO=127.0.0.1:$port \
        TIDEGATE_SMOKE_INBOX="$inbox" xvfb-run -a "$app" | grep '^smoke:'
}
echo "1 MiB:    $(smoke $((1 << 20)))"
echo "transfer: $(smoke "$size")"
