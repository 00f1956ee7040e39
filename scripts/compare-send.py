#!/usr/bin/env python3
"""Compare `tidegate send` with nc, tar | nc and an rsync daemon on the same page-cached data,
in the same run, over loopback. Every receiver is followed by a `sync` of what it received, so
each tool gives the same durability (tidegate flushes by itself; the sync is still counted).

Usage: scripts/compare-send.py [--size 4G] [--files 10000] [--rounds 1] [--only big|small|rss]
       [--rss-sizes 1G,8G]

Prints MiB/s (wall time from the sender's start to the receiver's end plus the sync), CPU
seconds and peak RSS of each end (from GNU time: see `Measured`), and ratios against the peers. For the tree, a local copy of it
by two `cp -r` at once (no network, no hashing) is timed too, as the floor of what any receiver
could do on that filesystem. Tools take turns going first.
Trees are received on a fresh ext4 filesystem per scenario, on a loop device with direct I/O
(see `FreshFs`: the host's own filesystem here has no journal, which makes file creation
depend on what was deleted in the last minutes); a single large file on the host's. Installs nc, rsync and
GNU time with apt-get when they are missing. With --only rss, --rounds runs each size that many
times. Data lives in $TIDEGATE_BENCH_DIR (default /tmp/tidegate-bench).
"""
import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BENCH = os.environ.get("TIDEGATE_BENCH_DIR", "/tmp/tidegate-bench")
# Both ends authenticate, as users run them.
os.environ.setdefault("TIDEGATE_KEY", "compare-send-passphrase")
TIDEGATE = os.environ.get("TIDEGATE_BIN", os.path.join(ROOT, "target", "release", "tidegate"))
GNU_TIME = "/usr/bin/time"


def ensure_tools():
    missing = [p for p, b in (("netcat-openbsd", "nc"), ("rsync", "rsync")) if not shutil.which(b)]
    if not os.access(GNU_TIME, os.X_OK):
        missing.append("time")
    if missing:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True)
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listening on {port}")


class Measured:
    """A child process run under GNU time: CPU time from wait4 (time's own is negligible), peak
    RSS from time's `%M`, the largest of the command and its children (for a pipeline run with
    `shell`, of every stage). Not wait4's `ru_maxrss` of our own child: Linux carries a
    process's maximum over `fork` and `exec`, so anything this script started directly would
    show at least the script's own RSS, about 16 MiB. time is a small process, and what it
    reports for its child starts from time's few MiB."""

    def __init__(self, args, stdin=None, stdout=None, shell=False):
        fd, self.report = tempfile.mkstemp(prefix="tidegate-rss-")
        os.close(fd)
        cmd = ["sh", "-c", args] if shell else list(args)
        self.proc = subprocess.Popen([GNU_TIME, "-f", "%M", "-o", self.report, *cmd],
                                     stdin=stdin, stdout=stdout, stderr=subprocess.DEVNULL)

    def terminate(self):
        """SIGTERM to the measured command itself: time does not pass signals on."""
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            children = [int(p) for p in f.read().split()]
        if not children:
            raise RuntimeError(f"{self.proc.args[5:]} is not running")
        for pid in children:
            os.kill(pid, signal.SIGTERM)

    def wait(self):
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        with open(self.report) as f:
            # time writes "Command exited with non-zero status N" first when it did.
            lines = f.read().split("\n")
        os.unlink(self.report)
        kib = [int(l) for l in lines if l.strip().isdigit()]
        if not kib:
            raise RuntimeError(f"no peak RSS from time for {self.proc.args[5:]}: {lines}")
        return {"cpu": usage.ru_utime + usage.ru_stime, "rss_mib": kib[-1] / 1024,
                "rc": self.proc.returncode}


def warm(path):
    subprocess.run(f"find {path} -type f -print0 | xargs -0 cat > /dev/null", shell=True, check=True)


def make_big(size):
    path = os.path.join(BENCH, f"send-{size}.bin")
    if not os.path.exists(path):
        subprocess.run([sys.executable, os.path.join(HERE, "make-data.py"), path, size], check=True)
    return path


def make_small(count):
    top = os.path.join(BENCH, f"small-{count}")
    if not os.path.exists(top):
        rng = random.Random(42)
        tmp = top + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for i in range(count):
            d = os.path.join(tmp, f"d{i // 100:03}")
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, f"f{i:05}"), "wb") as f:
                f.write(os.urandom(rng.randint(4096, 65536)))
        os.rename(tmp, top)
    return top


RECV = os.path.join(BENCH, "recv")
FLOOR = "2x cp -r local"
RUNS = iter(range(1, 1 << 30))

# This machine's ext4 has no journal. Without one, ext4 prefers not to reuse an inode freed in
# the last 60 seconds (360 while its inode table block is still dirty), and checks every free
# candidate against its on-disk deletion time, so creating files soon after deleting thousands
# costs several times more CPU (`recently_deleted` in fs/ext4/ialloc.c). Whichever tool ran
# right after a deleted tree paid for it (creating 10,000 files took 4.3 s there, 0.2 s on a
# fresh ext4). So each scenario receives into a fresh filesystem (`FreshFs`); without one,
# received trees are kept until the end of the scenario, and the scenario starts with a `sync`
# and a pause.
DELETED_INODE_WINDOW = 65


class FreshFs:
    """A new ext4 filesystem (with a journal, as mkfs makes it) on a loop device with direct
    I/O, mounted as the directory every tool receives into, so that each scenario starts from
    the same clean state and a `sync` still writes to the disk. Falls back to RECV on the
    host's filesystem (with `settle_after_deleting`) when it cannot be made (not root, no
    loop devices)."""

    def __init__(self, size_bytes):
        self.img = os.path.join(BENCH, "recv-fs.img")
        self.mnt = os.path.join(BENCH, "recv-fs")
        self.dev = None
        try:
            os.makedirs(self.mnt, exist_ok=True)
            with open(self.img, "wb") as f:
                f.truncate(size_bytes)
            subprocess.run(["mkfs.ext4", "-q", "-F", self.img], check=True)
            self.dev = subprocess.run(["losetup", "--direct-io=on", "--find", "--show", self.img],
                                      check=True, capture_output=True, text=True).stdout.strip()
            subprocess.run(["mount", self.dev, self.mnt], check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            print(f"(no fresh filesystem for the receivers: {e}; using {RECV})")
            self.close()
            self.mnt = None

    def close(self):
        if self.mnt and os.path.ismount(self.mnt):
            subprocess.run(["umount", self.mnt], check=False)
        if self.dev:
            subprocess.run(["losetup", "-d", self.dev], check=False)
            self.dev = None
        if os.path.exists(self.img):
            os.remove(self.img)


def clear_received():
    """Deletes every received tree; returns whether there was any."""
    had = os.path.isdir(RECV) and bool(os.listdir(RECV))
    shutil.rmtree(RECV, ignore_errors=True)
    os.makedirs(RECV, exist_ok=True)
    return had


def settle_after_deleting():
    subprocess.run(["sync"], check=True)
    time.sleep(DELETED_INODE_WINDOW)


RECV_ROOT = [RECV]


def fresh(name):
    path = os.path.join(RECV_ROOT[0], f"{next(RUNS):03}-{name}")
    os.makedirs(path)
    return path


def run_nc(src, tree):
    dst = fresh("nc")
    port = free_port()
    if tree:
        recv = Measured(f"nc -l 127.0.0.1 {port} | tar x -C {dst}", shell=True)
    else:
        out = open(os.path.join(dst, "f"), "wb")
        recv = Measured(["nc", "-l", "127.0.0.1", str(port)], stdout=out)
    wait_port_listen(port)
    start = time.time()
    if tree:
        send = Measured(f"tar c -C {os.path.dirname(src)} {os.path.basename(src)} | nc -N 127.0.0.1 {port}", shell=True)
    else:
        send = Measured(["nc", "-N", "127.0.0.1", str(port)], stdin=open(src, "rb"))
    s, r = send.wait(), recv.wait()
    subprocess.run(["sync", "-f", dst], check=True)
    return time.time() - start, s, r, dst


def wait_port_listen(port, timeout=10):
    """Waits until something listens on `port` without connecting to it (nc would accept
    the probe as its one connection)."""
    end = time.time() + timeout
    needle = f":{port:04X} "
    while time.time() < end:
        with open("/proc/net/tcp") as f:
            if any(needle in line and line.split()[3] == "0A" for line in f):
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listening on {port}")


def run_rsync(src, tree):
    dst = fresh("rsync")
    port = free_port()
    conf = os.path.join(BENCH, "rsyncd.conf")
    with open(conf, "w") as f:
        f.write(f"use chroot = no\n[m]\npath = {dst}\nread only = no\nuid = root\ngid = root\n")
    recv = Measured(["rsync", "--daemon", "--no-detach", f"--port={port}", f"--config={conf}",
                     "--address=127.0.0.1"])
    wait_port(port)
    start = time.time()
    send = Measured(["rsync", "-a", "--whole-file", src, f"rsync://127.0.0.1:{port}/m/"])
    s = send.wait()
    subprocess.run(["sync", "-f", dst], check=True)
    elapsed = time.time() - start
    recv.terminate()
    r = recv.wait()
    return elapsed, s, r, dst


def run_tidegate(src, tree):
    dst = fresh("tidegate")
    port = free_port()
    recv = Measured([TIDEGATE, "-q", "serve", "--dir", dst, "--listen", f"127.0.0.1:{port}"])
    wait_port(port)
    start = time.time()
    send = Measured([TIDEGATE, "-q", "send", src, "--to", f"127.0.0.1:{port}"])
    s = send.wait()
    subprocess.run(["sync", "-f", dst], check=True)
    elapsed = time.time() - start
    recv.terminate()
    r = recv.wait()
    return elapsed, s, r, dst


def run_local_copy(src, tree):
    """Not a competitor: the same tree copied on this machine by two `cp -r` at once (half of
    the top-level directories each), then a `sync`. No network and no hashing, both cores on
    reading, creating and writing files: about as fast as a receiver could put the tree on this
    filesystem."""
    dst = fresh("cp")
    parts = sorted(os.listdir(src))
    halves = [parts[: len(parts) // 2], parts[len(parts) // 2:]]
    top = os.path.join(dst, os.path.basename(src))
    os.makedirs(top)
    start = time.time()
    copies = [Measured(["cp", "-r", *[os.path.join(src, p) for p in half], top]) for half in halves if half]
    usage = [c.wait() for c in copies]
    subprocess.run(["sync", "-f", dst], check=True)
    elapsed = time.time() - start
    s = {"cpu": sum(u["cpu"] for u in usage), "rss_mib": max(u["rss_mib"] for u in usage), "rc": 0}
    return elapsed, s, {"cpu": 0.0, "rss_mib": 0.0, "rc": 0}, dst


def check(src, dst, tree):
    if tree:
        r = subprocess.run(["diff", "-rq", src, os.path.join(dst, os.path.basename(src))], capture_output=True)
    else:
        got = os.path.join(dst, "f") if os.path.exists(os.path.join(dst, "f")) else os.path.join(dst, os.path.basename(src))
        r = subprocess.run(["cmp", "-s", src, got])
    if r.returncode != 0:
        raise RuntimeError(f"received data differs from {src} in {dst}")


def scenario(name, src, tree, rounds):
    total = int(subprocess.run(["du", "-sb", src], capture_output=True, text=True, check=True).stdout.split()[0])
    tools = [("nc" if not tree else "tar | nc", run_nc), ("rsync daemon", run_rsync), ("tidegate", run_tidegate)]
    if tree:
        tools.append((FLOOR, run_local_copy))
    results = {t: [] for t, _ in tools}
    clear_received()
    # Trees go to a fresh filesystem with room for every tree received (they are kept until the
    # end). One large file creates one inode: it is received on the host's filesystem, as
    # before, and deleted after each run.
    fs = FreshFs(total * len(tools) * rounds * 2) if tree else None
    if fs and fs.mnt:
        RECV_ROOT[0] = fs.mnt
    elif tree:
        # Also after deletions made before this script started (an earlier run, a test).
        settle_after_deleting()
    for round in range(rounds):
        # Each round starts with a different tool.
        k = round % len(tools)
        for tool, fn in tools[k:] + tools[:k]:
            warm(src)
            elapsed, s, r, dst = fn(src, tree)
            check(src, dst, tree)
            results[tool].append((elapsed, s, r))
            if not tree:
                # One deleted inode costs nothing later; 4 GiB of space does.
                shutil.rmtree(dst, ignore_errors=True)
    clear_received()
    if fs:
        fs.close()
    RECV_ROOT[0] = RECV
    print(f"\n{name}: {total / 2**20:.0f} MiB, {rounds} round(s), page cache warmed before each run")
    print(f"{'tool':14} {'MiB/s':>8} {'CPU s (send+recv)':>18} {'RSS send':>9} {'RSS recv':>9}")
    best = {}
    for tool, runs in results.items():
        rate = max(total / 2**20 / e for e, _, _ in runs)
        cpu = min(s["cpu"] + r["cpu"] for _, s, r in runs)
        rs = max(s["rss_mib"] for _, s, _ in runs)
        rr = max(r["rss_mib"] for _, _, r in runs)
        best[tool] = rate
        print(f"{tool:14} {rate:8.0f} {cpu:18.2f} {rs:8.1f}M {rr:8.1f}M")
    for tool in best:
        if tool not in ("tidegate", FLOOR):
            print(f"ratio tidegate / {tool}: {best['tidegate'] / best[tool]:.2f}x")
    if FLOOR in best:
        for tool in best:
            if tool != FLOOR:
                print(f"{tool} reaches {best[tool] / best[FLOOR]:.0%} of the local copy")
    return best


def rss_scenario(sizes, rounds):
    """Peak RSS of each tidegate end, as separate processes, for files of each size (received on
    the host's filesystem, deleted after each run). A receiver of about 10 MiB moves by up to
    1.5 MiB between runs of the same file, so each size is sent `rounds` times and the ratio is
    of the highest peaks."""
    print(f"\npeak RSS of each end, tidegate serve + tidegate send, default options")
    print(f"{'file':>6} {'MiB/s':>8} {'RSS send':>9} {'RSS recv':>9}")
    peaks = []
    for size in sizes:
        src = make_big(size)
        total = os.path.getsize(src)
        highest = (0.0, 0.0)
        for _ in range(rounds):
            warm(src)
            elapsed, s, r, dst = run_tidegate(src, False)
            check(src, dst, False)
            shutil.rmtree(dst, ignore_errors=True)
            highest = (max(highest[0], s["rss_mib"]), max(highest[1], r["rss_mib"]))
            print(f"{size:>6} {total / 2**20 / elapsed:8.0f} {s['rss_mib']:8.1f}M {r['rss_mib']:8.1f}M")
        if rounds > 1:
            print(f"{size:>6} {'highest':>8} {highest[0]:8.1f}M {highest[1]:8.1f}M")
        peaks.append(highest)
    for (s0, r0), (s1, r1), size in zip(peaks, peaks[1:], sizes[1:]):
        print(f"ratio {size} / {sizes[0]}: sender {s1 / s0:.3f}, receiver {r1 / r0:.3f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="4G")
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--only", choices=["big", "small", "rss"])
    ap.add_argument("--rss-sizes", default="1G,8G", help="file sizes for --only rss")
    a = ap.parse_args()
    os.makedirs(BENCH, exist_ok=True)
    ensure_tools()
    if a.only == "rss":
        rss_scenario(a.rss_sizes.split(","), a.rounds)
        return
    if a.only != "small":
        scenario(f"one {a.size} file", make_big(a.size), False, a.rounds)
    if a.only != "big":
        scenario(f"{a.files} files of 4-64 KiB", make_small(a.files), True, a.rounds)


if __name__ == "__main__":
    main()
