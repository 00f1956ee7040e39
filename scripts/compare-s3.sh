#!/usr/bin/env bash
# tidegate against `rclone copy` putting data into a one-node Garage on loopback, taking turns:
# one large page-cached file, and compare-send.py's tree of 10,000 files of 4-64 KiB. Prints
# each run's wall time (the client's start to its exit), the client's peak RSS (GNU time's %M)
# and the CPU seconds spent by the client and by Garage (which share the machine's cores, so
# they say where the time goes), then the medians.
#
# Usage: scripts/compare-s3.sh [SIZE=4G] [ROUNDS=3]
#   TIDEGATE_BIN   the build to measure (default target/release/tidegate)
#   RCLONE_LARGE   rclone's flags for the large file (default: its best measured here)
#   RCLONE_SMALL   rclone's flags for the small files (default: its best measured here)
#   SCENARIOS      which of "large small" to run (default both)
#   GARAGE_DIR     where Garage keeps its data (default $TIDEGATE_BENCH_DIR/garage); a tmpfs
#                  such as /dev/shm/tidegate-garage takes the disk out of the comparison
#   GARAGE_FS      a size (12G): put GARAGE_DIR on a new ext4 filesystem for every run (needs
#                  root and a loop device)
#   GARAGE_DB      Garage's metadata engine: lmdb (its default) or sqlite
# Needs garage (cargo install garage --locked), rclone (Debian's package) and GNU time, which
# it does not install. Garage's data goes under GARAGE_DIR and is deleted at the end; every
# run gets a fresh, empty node. rclone runs without AWS_CA_BUNDLE, which
# rclone 1.60 cannot load.
set -euo pipefail
size=${1:-4G} rounds=${2:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=$(realpath "${TIDEGATE_BIN:-$here/target/release/tidegate}")
bench=${TIDEGATE_BENCH_DIR:-/tmp/tidegate-bench}
rclone_large=${RCLONE_LARGE:---s3-upload-concurrency 8 --s3-chunk-size 16M --s3-disable-checksum}
rclone_small=${RCLONE_SMALL:---transfers 32 --checkers 32 --no-check-dest}
garage=$(command -v garage || echo "$HOME/.cargo/bin/garage")
mkdir -p "$bench"
big="$bench/send-$size.bin"
small="$bench/small-10000"
[ -f "$big" ] || python3 "$here/scripts/make-data.py" "$big" "$size"
[ -d "$small" ] || python3 -c "
import importlib.util, sys
spec = importlib.util.spec_from_file_location('cs', '$here/scripts/compare-send.py')
cs = importlib.util.module_from_spec(spec); spec.loader.exec_module(cs); cs.make_small(10000)"

work=${GARAGE_DIR:-$bench/garage}
pid="" dev=""
stop_garage() {
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        pid=""
    fi
    if [ -n "$dev" ]; then
        umount "$work"
        losetup -d "$dev"
        rm -f "$work.img"
        dev=""
    fi
    rm -rf "$work" 2>/dev/null || { sleep 1; rm -rf "$work"; }
}
# With GARAGE_FS, Garage's data goes on a new ext4 filesystem for every run (a loop device
# with direct I/O, as compare-send.py receives trees): ext4 creates files slowly right after
# tens of thousands were deleted, which would otherwise make each run slower than the last.
fresh_fs() {
    [ -n "${GARAGE_FS:-}" ] || return 0
    truncate -s "$GARAGE_FS" "$work.img"
    mkfs.ext4 -q -F "$work.img"
    dev=$(losetup --direct-io=on --find --show "$work.img")
    mount "$dev" "$work"
}
trap 'stop_garage; rm -f "$work.out"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
g() { "$garage" -c "$work/garage.toml" "$@"; }

# A fresh, empty node for every run: Garage deduplicates blocks, so a store that already
# holds the data would only hash it, not write it.
start_garage() {
    stop_garage
    mkdir -p "$work"
    fresh_fs
    local rpc s3 key id secret
    rpc=$(free_port)
    s3=$(free_port)
    {
        echo "metadata_dir = \"$work/meta\""
        echo "data_dir = \"$work/data\""
        echo "db_engine = \"${GARAGE_DB:-lmdb}\""
        echo 'replication_factor = 1'
        echo "rpc_bind_addr = \"127.0.0.1:$rpc\""
        echo "rpc_public_addr = \"127.0.0.1:$rpc\""
        echo "rpc_secret = \"$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')\""
        echo '[s3_api]'
        echo 's3_region = "garage"'
        echo "api_bind_addr = \"127.0.0.1:$s3\""
        echo 'root_domain = ".s3.garage.localhost"'
    } >"$work/garage.toml"
    RUST_LOG=warn "$garage" -c "$work/garage.toml" server >"$work/garage.log" 2>&1 &
    pid=$!
    until g status >/dev/null 2>&1; do sleep 0.2; done
    g layout assign -z dc1 -c 100G "$(g node id -q | cut -d@ -f1)" >/dev/null
    g layout apply --version 1 >/dev/null
    until g bucket create bench >/dev/null 2>&1; do sleep 0.3; done
    key=$(g json-api CreateKey '{"name": "bench"}')
    id=$(echo "$key" | python3 -c 'import json,sys; print(json.load(sys.stdin)["accessKeyId"])')
    secret=$(echo "$key" | python3 -c 'import json,sys; print(json.load(sys.stdin)["secretAccessKey"])')
    g bucket allow --read --write --owner bench --key "$id" >/dev/null
    export AWS_ENDPOINT_URL="http://127.0.0.1:$s3" AWS_REGION=garage
    export AWS_ACCESS_KEY_ID="$id" AWS_SECRET_ACCESS_KEY="$secret"
    export RCLONE_CONFIG_G_TYPE=s3 RCLONE_CONFIG_G_PROVIDER=Other
    export RCLONE_CONFIG_G_ENDPOINT="$AWS_ENDPOINT_URL" RCLONE_CONFIG_G_REGION=garage
    export RCLONE_CONFIG_G_ACCESS_KEY_ID="$id" RCLONE_CONFIG_G_SECRET_ACCESS_KEY="$secret"
}

# Garage's CPU seconds so far (all its threads).
garage_cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$pid/stat"; }

# Prints "SECONDS PEAK_RSS_KIB CLIENT_CPU GARAGE_CPU" for one run of a command.
measured() {
    local t start end g0 g1
    t=$(mktemp)
    g0=$(garage_cpu)
    start=$(date +%s.%N)
    /usr/bin/time -f '%M %U %S' -o "$t" "$@" >/dev/null 2>"$t.err" || {
        cat "$t.err" >&2
        rm -f "$t" "$t.err"
        return 1
    }
    end=$(date +%s.%N)
    g1=$(garage_cpu)
    read -r k u sy < <(tail -1 "$t")
    echo "$(echo "$end - $start" | bc) $k $(echo "$u + $sy" | bc) $(echo "$g1 - $g0" | bc)"
    rm -f "$t" "$t.err"
}

# One run of TOOL on SCENARIO into a fresh node (started in this shell, not a subshell).
run() {
    local what=$1 tool=$2 src flags
    [ "$what" = large ] && src=$big || src=$small
    start_garage
    find "$src" -type f -print0 | xargs -0 cat >/dev/null
    case $tool in
        tidegate) measured "$bin" send --no-progress --to "s3://bench/t" "$src" >"$work.out" ;;
        rclone)
            flags=$rclone_large
            [ "$what" = small ] && flags=$rclone_small
            # shellcheck disable=SC2086
            measured env -u AWS_CA_BUNDLE rclone copy $flags "$src" "G:bench/r" >"$work.out" ;;
    esac
}

echo "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores;" \
    "$("$garage" --version 2>/dev/null | head -1) (${GARAGE_DB:-lmdb}); $(rclone version | head -1)"
echo "rclone large: $rclone_large; rclone small: $rclone_small"
declare -A secs rss ccpu gcpu
for what in ${SCENARIOS:-large small}; do
    run "$what" tidegate || exit 1 # warm-up, uncounted
    for r in $(seq "$rounds"); do
        order="tidegate rclone"
        (( r % 2 == 0 )) && order="rclone tidegate"
        line="$what round $r:"
        for tool in $order; do
            run "$what" "$tool" || { echo "$tool failed on $what" >&2; exit 1; }
            read -r s k c gc <"$work.out"
            secs[$what-$tool]+="$s "
            rss[$what-$tool]+="$k "
            ccpu[$what-$tool]+="$c "
            gcpu[$what-$tool]+="$gc "
            line+=" $tool ${s}s ${k}KiB cpu ${c}s garage ${gc}s;"
        done
        echo "$line"
    done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
big_mib=$(( $(stat -c %s "$big") >> 20 ))
small_mib=$(du -sm --apparent-size "$small" | cut -f1)
for what in ${SCENARIOS:-large small}; do
    mib=$big_mib
    [ "$what" = small ] && mib=$small_mib
    for tool in tidegate rclone; do
        s=$(echo "${secs[$what-$tool]}" | median)
        k=$(echo "${rss[$what-$tool]}" | median)
        c=$(echo "${ccpu[$what-$tool]}" | median)
        gc=$(echo "${gcpu[$what-$tool]}" | median)
        echo "$what $tool: median $s s ($(echo "scale=0; $mib / $s" | bc) MiB/s), peak RSS $((k / 1024)) MiB," \
            "CPU: client $c s, Garage $gc s"
    done
    t=$(echo "${secs[$what-tidegate]}" | median)
    o=$(echo "${secs[$what-rclone]}" | median)
    echo "$what: tidegate is $(echo "scale=2; $o / $t" | bc)x rclone"
done
