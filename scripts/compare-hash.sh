#!/usr/bin/env bash
# Compares `tidegate hash` with `b3sum` on the same page-cached file, in the same run, with
# `cat FILE > /dev/null` (the page-cache read rate, the limit on this machine) beside them.
# The commands take turns, round after round; medians are reported, with CPU time, peak RSS
# (GNU time's, see measure.py) and the ratio to b3sum.
#
#   scripts/compare-hash.sh [SIZE] [ROUNDS]      (defaults: 4G, 5)
#
# TIDEGATE_OTHER=/path/to/tidegate adds another build to the turns (an A/B of a change).
# TIDEGATE_HASH_ARGS="--chunk-size 8MiB" passes options to both tidegate builds.
#
# The data file lives in ${TIDEGATE_BENCH_DIR:-/tmp/tidegate-bench} and is reused. The page
# cache is warmed (cat > /dev/null) right before every measured run, because this machine's
# cache is trimmed from outside.
set -euo pipefail
size=${1:-4G}
rounds=${2:-5}
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
dir=${TIDEGATE_BENCH_DIR:-/tmp/tidegate-bench}
mkdir -p "$dir"
file="$dir/hash-$size.bin"
read -r -a extra <<< "${TIDEGATE_HASH_ARGS:-}"

command -v b3sum >/dev/null || cargo install --locked b3sum
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time; }
(cd "$root" && cargo build --release --quiet)
tidegate="$root/target/release/tidegate"
[ -f "$file" ] || python3 "$here/make-data.py" "$file" "$size"
bytes=$(stat -c %s "$file")
grep -qw avx512f /proc/cpuinfo && simd=AVX-512 || simd="no AVX-512"
echo "machine: $(nproc) cores, $simd; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"

warm() { cat "$file" > /dev/null; }
measure() { python3 "$here/measure.py" --stdout "$dir/out.txt" -- "$@"; }

names=(b3sum cat tidegate)
[ -n "${TIDEGATE_OTHER:-}" ] && names+=(other)
results="$dir/compare-hash.jsonl"
: > "$results"
for r in $(seq 1 "$rounds"); do
  for name in "${names[@]}"; do
    warm
    case $name in
      b3sum) line=$(measure b3sum "$file"); b3hash=$(cut -d' ' -f1 "$dir/out.txt") ;;
      cat) line=$(measure cat "$file") ;;
      tidegate | other)
        bin=$tidegate; [ "$name" = other ] && bin=$TIDEGATE_OTHER
        line=$(measure "$bin" hash "${extra[@]}" "$file")
        tdhash=$(cut -d' ' -f1 "$dir/out.txt")
        [ "$b3hash" = "$tdhash" ] || { echo "hash mismatch: b3sum $b3hash, $name $tdhash" >&2; exit 1; } ;;
    esac
    echo "{\"name\": \"$name\", \"run\": $line}" >> "$results"
  done
done

python3 - "$bytes" "$results" <<'PY'
import json, statistics, sys
size = int(sys.argv[1])
runs = {}
for line in open(sys.argv[2]):
    r = json.loads(line)
    runs.setdefault(r["name"], []).append(r["run"])
print(f"file: {size / 2**30:.2f} GiB, {len(runs['b3sum'])} rounds taking turns, "
      f"page cache warmed before each run")
med = {}
for name, rs in runs.items():
    rate = [size / r["wall_s"] / 2**30 for r in rs]
    med[name] = statistics.median(rate)
    print(f"{name:9} GiB/s median {med[name]:5.2f} (runs {', '.join(f'{x:.2f}' for x in rate)})  "
          f"CPU {statistics.median(r['cpu_s'] for r in rs):5.2f} s  "
          f"peak RSS {max(r['maxrss_mib'] for r in rs):7.1f} MiB")
for name in ("tidegate", "other"):
    if name in med:
        print(f"ratio {name}/b3sum throughput: {med[name] / med['b3sum']:.2f}x")
PY
