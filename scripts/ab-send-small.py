#!/usr/bin/env python3
"""A/B two or more tidegate builds on compare-send.py's tree of small files.

Usage: scripts/ab-send-small.py BIN_A BIN_B [BIN ...] [--rounds 10] [--files 10000]

Each round sends the tree once with every binary (`serve` and `send` both from that binary),
the order reversed every other round, into one fresh ext4 filesystem on a loop device (see
compare-send.py's `FreshFs`), with the page cache warmed before each transfer. Prints, per
binary, every transfer's wall time (the sender's start to its exit; tidegate is durable by
then) and the medians of wall time, each end's CPU time and the machine's idle core-seconds
over the transfer (from /proc/stat). This machine's speed drifts by several percent within
minutes, so only binaries measured in the same run, alternating, are compared; the "tried and
not kept" figures of docs/PERFORMANCE.md come from this script.
"""
import argparse
import importlib.util
import os
import shutil
import statistics
import time

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("compare_send", os.path.join(HERE, "compare-send.py"))
cs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cs)


def idle_ticks():
    """Idle plus iowait, in clock ticks, of the whole machine."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    return int(fields[3]) + int(fields[4])


def transfer(binary, tree):
    dst = cs.fresh(os.path.basename(binary))
    port = cs.free_port()
    recv = cs.Measured([binary, "-q", "serve", "--dir", dst, "--listen", f"127.0.0.1:{port}"])
    cs.wait_port(port)
    idle0, start = idle_ticks(), time.time()
    send = cs.Measured([binary, "-q", "send", tree, "--to", f"127.0.0.1:{port}"])
    s = send.wait()
    wall = time.time() - start
    idle = (idle_ticks() - idle0) / os.sysconf("SC_CLK_TCK")
    recv.terminate()
    r = recv.wait()
    if s["rc"] != 0 or r["rc"] != 0:
        raise RuntimeError(f"{binary}: send exited {s['rc']}, serve {r['rc']}")
    cs.check(tree, dst, True)
    shutil.rmtree(dst)
    return wall, s["cpu"], r["cpu"], idle


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--files", type=int, default=10000)
    a = ap.parse_args()
    binaries = [os.path.abspath(b) for b in a.binaries]
    if not os.access(cs.GNU_TIME, os.X_OK):
        raise SystemExit(f"{cs.GNU_TIME} is missing (apt-get install time)")
    os.makedirs(cs.BENCH, exist_ok=True)
    tree = cs.make_small(a.files)
    fs = cs.FreshFs(20 * 2**30)
    if fs.mnt:
        cs.RECV_ROOT[0] = fs.mnt
    results = {b: [] for b in binaries}
    try:
        for i in range(a.rounds):
            for b in binaries if i % 2 == 0 else binaries[::-1]:
                cs.warm(tree)
                results[b].append(transfer(b, tree))
    finally:
        fs.close()
        cs.RECV_ROOT[0] = cs.RECV
    print(f"{a.files} files, {a.rounds} alternating rounds; medians: wall, CPU of send and "
          f"serve, idle core-seconds")
    for b, runs in results.items():
        med = [statistics.median(r[k] for r in runs) for k in range(4)]
        walls = " ".join(f"{r[0]:.3f}" for r in runs)
        print(f"{b}\n  wall {walls}\n  median wall {med[0]:.3f} s, send {med[1]:.3f} s, "
              f"serve {med[2]:.3f} s, idle {med[3]:.3f}")


if __name__ == "__main__":
    main()
