#!/usr/bin/env bash
# One large page-cached file over loopback, encrypted, taking turns: tidegate with a
# passphrase (TLS 1.3 + PAKE), `socat` over TLS 1.3, `scp` to a local sshd, and optionally an
# older tidegate build (say, the plaintext protocol 4) for how much of its speed encryption
# keeps.
#
# Usage: scripts/compare-tls.sh [SIZE_MIB=4096] [ROUNDS=3]
#   TIDEGATE_BIN    the build under test (default target/release/tidegate)
#   TIDEGATE_OTHER  a second build to compare (optional)
#   DEST            where files are received (default /dev/shm, so that the disk does not set
#                   the pace; every transfer ends durable: tidegate syncs, the others are
#                   followed by `sync`)
# Needs socat, openssl and openssh-server (sshd), which it does not install. sshd is started
# on a spare loopback port with keys made for this run, and stopped at the end.
set -euo pipefail
size=${1:-4096} rounds=${2:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
new=$(realpath "${TIDEGATE_BIN:-$here/target/release/tidegate}")
other=${TIDEGATE_OTHER:+$(realpath "$TIDEGATE_OTHER")}
dest=${DEST:-/dev/shm}
bench=${TIDEGATE_BENCH_DIR:-/tmp/tidegate-bench}
mkdir -p "$bench"
src="$bench/tls-$size.bin"
[ -f "$src" ] || head -c "${size}M" /dev/urandom >"$src"
export TIDEGATE_KEY=${TIDEGATE_KEY:-compare-tls-passphrase}

work=$(mktemp -d /tmp/compare-tls.XXXX)
sshd_pid=""
cleanup() {
    [ -n "$sshd_pid" ] && kill "$sshd_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# socat's certificate, and sshd's host and client keys.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat "$work/key.pem" "$work/cert.pem" >"$work/socat.pem"
ssh-keygen -q -t ed25519 -N '' -f "$work/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$work/client_key"
cp "$work/client_key.pub" "$work/authorized_keys"
ssh_port=$(free_port)
cat >"$work/sshd_config" <<EOF
Port $ssh_port
ListenAddress 127.0.0.1
HostKey $work/host_key
AuthorizedKeysFile $work/authorized_keys
PermitRootLogin yes
StrictModes no
PasswordAuthentication no
PidFile $work/sshd.pid
UsePAM no
Subsystem sftp internal-sftp
EOF
mkdir -p /run/sshd
/usr/sbin/sshd -D -f "$work/sshd_config" &
sshd_pid=$!
sleep 0.5

out_dir() { mktemp -d "$dest/compare-tls.XXXX"; }
now() { date +%s.%N; }
rate() { echo "scale=0; $size / ($2 - $1)" | bc; }

run_tidegate() {
    local bin=$1 dir log pid addr start end
    dir=$(out_dir)
    log="$dir.log"
    "$bin" serve --listen 127.0.0.1:0 --dir "$dir" 2>"$log" &
    pid=$!
    addr=""
    for _ in $(seq 100); do
        addr=$(grep -o '127.0.0.1:[0-9]*' "$log" | head -1 || true)
        [ -n "$addr" ] && break
        sleep 0.05
    done
    start=$(now)
    "$bin" send --no-progress --to "$addr" "$src" >/dev/null 2>&1 || echo "$bin: send failed" >&2
    end=$(now)
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    cmp -s "$src" "$dir/$(basename "$src")" || { rm -rf "$dir"; echo "$bin: received file differs" >&2; return 1; }
    rm -rf "$dir" "$log"
    rate "$start" "$end"
}

run_socat() {
    local dir port pid start end
    dir=$(out_dir)
    port=$(free_port)
    socat -b 131072 -u "OPENSSL-LISTEN:$port,bind=127.0.0.1,reuseaddr,cert=$work/socat.pem,verify=0" \
        "CREATE:$dir/f" &
    pid=$!
    sleep 0.3
    start=$(now)
    socat -b 131072 -u "FILE:$src" "OPENSSL:127.0.0.1:$port,verify=0"
    wait "$pid"
    sync
    end=$(now)
    cmp -s "$src" "$dir/f" || { rm -rf "$dir"; echo "socat: received file differs" >&2; return 1; }
    rm -rf "$dir"
    rate "$start" "$end"
}

run_scp() {
    local dir start end
    dir=$(out_dir)
    start=$(now)
    scp -q -c aes128-gcm@openssh.com -i "$work/client_key" -P "$ssh_port" \
        -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
        "$src" "root@127.0.0.1:$dir/f"
    sync
    end=$(now)
    cmp -s "$src" "$dir/f" || { rm -rf "$dir"; echo "scp: received file differs" >&2; return 1; }
    rm -rf "$dir"
    rate "$start" "$end"
}

echo "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores;" \
    "$size MiB into $dest; $(socat -V | grep -m1 'socat version'); $(ssh -V 2>&1)"
cat "$src" >/dev/null
run_tidegate "$new" >/dev/null # warm-up, uncounted
names=(tidegate socat scp)
[ -n "$other" ] && names+=(other)
declare -A results
for r in $(seq "$rounds"); do
    order=("${names[@]}")
    if (( r % 2 == 0 )); then
        order=($(printf '%s\n' "${names[@]}" | tac))
    fi
    line="round $r:"
    for n in "${order[@]}"; do
        cat "$src" >/dev/null
        case $n in
            tidegate) v=$(run_tidegate "$new") ;;
            other) v=$(run_tidegate "$other") ;;
            socat) v=$(run_socat) ;;
            scp) v=$(run_scp) ;;
        esac
        results[$n]+="$v "
        line+=" $n $v"
    done
    echo "$line MiB/s"
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
declare -A med
for n in "${names[@]}"; do
    med[$n]=$(echo "${results[$n]}" | median)
done
echo -n "median MiB/s:"
for n in "${names[@]}"; do echo -n " $n ${med[$n]}"; done
echo
echo "tidegate/socat $(echo "scale=2; ${med[tidegate]} / ${med[socat]}" | bc)," \
    "tidegate/scp $(echo "scale=2; ${med[tidegate]} / ${med[scp]}" | bc)"
if [ -n "$other" ]; then
    echo "tidegate/other $(echo "scale=3; ${med[tidegate]} / ${med[other]}" | bc)"
fi
