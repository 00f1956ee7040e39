#!/usr/bin/env bash
# Peak RSS of `send` and `serve` for one directory holding many empty files: what the per-file
# bookkeeping of both ends costs, with no file data to hide it.
#
# Usage: scripts/many-files-rss.sh [FILES] (default 1000000)
#
# Makes FILES empty files in one directory under $TIDEGATE_BENCH_DIR (default
# /tmp/tidegate-bench; kept for the next run), starts `serve` on a loopback port, runs
# `send --json` (which also counts the sources, as a progress bar does), and prints both ends'
# peak RSS (GNU time's %M) and the wall time. Note: on a filesystem without a journal, files
# created within minutes of deleting many others are slow to create (ext4 skips recently
# deleted inodes), so the receiving directory is deleted only at the end.
set -euo pipefail
FILES=${1:-1000000}
BENCH=${TIDEGATE_BENCH_DIR:-/tmp/tidegate-bench}
BIN=${TIDEGATE_BIN:-$(dirname "$0")/../target/release/tidegate}
SRC="$BENCH/flat-$FILES"
DST=$(mktemp -d "$BENCH/recv-flat.XXXXXX")
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time; }
[ -x "$BIN" ] || (cd "$(dirname "$0")/.." && cargo build --release --quiet)

if [ ! -f "$SRC.complete" ]; then
    echo "making $FILES empty files in $SRC"
    mkdir -p "$SRC"
    python3 - "$SRC" "$FILES" <<'EOF'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    os.close(os.open(os.path.join(d, f"file-{i:08d}.jpg"), os.O_CREAT | os.O_WRONLY, 0o644))
open(d + ".complete", "w").close()
EOF
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
serve_time=$(mktemp)
/usr/bin/time -f "%M" -o "$serve_time" "$BIN" -q serve --dir "$DST" --listen "127.0.0.1:$port" &
timer=$!
for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && break
    sleep 0.05
done
send_out=$(/usr/bin/time -f "%e %M" "$BIN" send --json "$SRC" --to "127.0.0.1:$port" 2>&1 >/dev/null | tail -1)
pkill -INT -P "$timer"
wait "$timer" || true
read -r wall send_kb <<<"$send_out"
serve_kb=$(cat "$serve_time")
received=$(find "$DST" -type f | wc -l)
echo "files: $FILES sent, $received received, in $wall s"
echo "peak RSS: send $((send_kb / 1024)) MiB, serve $((serve_kb / 1024)) MiB"
rm -rf "$DST" "$serve_time"
