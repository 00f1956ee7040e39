#!/usr/bin/env bash
# Compares `tidegate hash` with `b3sum` on the same page-cached file, in the same run.
# Prints throughput, CPU time and peak RSS (GNU time's, see measure.py) of each, and the ratios.
#
#   scripts/compare-hash.sh [SIZE] [ROUNDS]      (defaults: 4G, 3)
#
# The data file lives in ${TIDEGATE_BENCH_DIR:-/tmp/tidegate-bench} and is reused. The page
# cache is warmed (cat > /dev/null) right before every measured run, because this machine's
# cache is trimmed from outside.
set -euo pipefail
size=${1:-4G}
rounds=${2:-3}
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
dir=${TIDEGATE_BENCH_DIR:-/tmp/tidegate-bench}
mkdir -p "$dir"
file="$dir/hash-$size.bin"

command -v b3sum >/dev/null || cargo install --locked b3sum
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time; }
(cd "$root" && cargo build --release --quiet)
tidegate="$root/target/release/tidegate"
[ -f "$file" ] || python3 "$here/make-data.py" "$file" "$size"
bytes=$(stat -c %s "$file")

warm() { cat "$file" > /dev/null; }
measure() { python3 "$here/measure.py" --stdout "$dir/out.txt" -- "$@"; }

declare -a b3 td
for r in $(seq 1 "$rounds"); do
  warm; b3+=("$(measure b3sum "$file")"); b3hash=$(cut -d' ' -f1 "$dir/out.txt")
  warm; td+=("$(measure "$tidegate" hash "$file")"); tdhash=$(cut -d' ' -f1 "$dir/out.txt")
  [ "$b3hash" = "$tdhash" ] || { echo "hash mismatch: b3sum $b3hash, tidegate $tdhash" >&2; exit 1; }
done

python3 - "$bytes" "${b3[*]}" "${td[*]}" <<'PY'
import json, statistics, sys
size = int(sys.argv[1])
def parse(s):
    return [json.loads(x) for x in s.replace("} {", "}\n{").splitlines()]
b3, td = parse(sys.argv[2]), parse(sys.argv[3])
def summary(name, runs):
    rate = [size / r["wall_s"] / 2**30 for r in runs]
    med = statistics.median(rate)
    print(f"{name:9} GiB/s median {med:5.2f} (runs {', '.join(f'{x:.2f}' for x in rate)})  "
          f"CPU {statistics.median(r['cpu_s'] for r in runs):5.2f} s  "
          f"peak RSS {max(r['maxrss_mib'] for r in runs):7.1f} MiB")
    return med, max(r['maxrss_mib'] for r in runs)
print(f"file: {size / 2**30:.2f} GiB, {len(b3)} rounds, page cache warmed before each run")
b, brss = summary("b3sum", b3)
t, trss = summary("tidegate", td)
print(f"ratio tidegate/b3sum throughput: {t / b:.2f}x   peak RSS: {trss:.1f} MiB vs {brss:.1f} MiB")
PY
