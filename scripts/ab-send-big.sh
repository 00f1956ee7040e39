#!/usr/bin/env bash
# A/B two tidegate builds sending one large page-cached file over loopback, alternating.
#
# Usage: scripts/ab-send-big.sh OLD_BIN NEW_BIN [ROUNDS=5] [SIZE_MIB=2048]
#
# Each round runs `serve` and `send` of OLD_BIN, then of NEW_BIN (the order reversed every
# other round), into a fresh directory under $AB_DIR (default /dev/shm, so that the disk does
# not set the pace), and prints each one's MiB/s (the sender's start to its exit: tidegate is
# durable by then), after one uncounted warm-up transfer. Then the medians. The source lives
# in $TIDEGATE_BENCH_DIR (default /tmp/tidegate-bench), read once first to warm the cache.
set -euo pipefail
old=$(realpath "$1") new=$(realpath "$2") rounds=${3:-5} size=${4:-2048}
bench=${TIDEGATE_BENCH_DIR:-/tmp/tidegate-bench}
# Both ends authenticate, as users run them.
export TIDEGATE_KEY=${TIDEGATE_KEY:-ab-bench-passphrase}
mkdir -p "$bench"
src="$bench/ab-$size.bin"
[ -f "$src" ] || head -c "${size}M" /dev/urandom >"$src"
cat "$src" >/dev/null

run() {
    local bin=$1 dir log pid addr start end
    dir=$(mktemp -d "${AB_DIR:-/dev/shm}/ab.XXXX")
    log="$dir.log"
    "$bin" serve --listen 127.0.0.1:0 --dir "$dir" 2>"$log" &
    pid=$!
    addr=""
    for _ in $(seq 100); do
        addr=$(grep -o '127.0.0.1:[0-9]*' "$log" | head -1 || true)
        [ -n "$addr" ] && break
        sleep 0.05
    done
    start=$(date +%s.%N)
    "$bin" send --no-progress --to "$addr" "$src" >/dev/null 2>&1 || echo "send failed" >&2
    end=$(date +%s.%N)
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    cmp -s "$src" "$dir/$(basename "$src")" || echo "received file differs" >&2
    rm -rf "$dir" "$log"
    echo "scale=0; $size / ($end - $start)" | bc
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

# The first transfer after a while is slower, whichever binary makes it: not counted.
run "$new" >/dev/null
olds=() news=()
for r in $(seq "$rounds"); do
    if ((r % 2)); then
        o=$(run "$old"); n=$(run "$new")
    else
        n=$(run "$new"); o=$(run "$old")
    fi
    olds+=("$o") news+=("$n")
    echo "round $r: old $o, new $n MiB/s"
done
mo=$(printf '%s\n' "${olds[@]}" | median)
mn=$(printf '%s\n' "${news[@]}" | median)
echo "median: old $mo, new $mn MiB/s (new/old $(echo "scale=3; $mn / $mo" | bc))"
