#!/usr/bin/env python3
"""Run a command and print one JSON line: wall seconds, CPU seconds, peak RSS, exit code.

Usage: measure.py [--stdout FILE] -- CMD [ARGS...]
The command runs under GNU time (/usr/bin/time), whose `%M` is the command's own peak RSS.
wait4's `ru_maxrss` for a child of this script would not do: Linux carries a process's maximum
over `fork` and `exec`, so it would never be below this Python process's RSS (about 10 MiB).
"""
import json
import os
import subprocess
import sys
import tempfile
import time

GNU_TIME = "/usr/bin/time"


def main() -> int:
    args = sys.argv[1:]
    stdout = subprocess.DEVNULL
    if args[:1] == ["--stdout"]:
        stdout = open(args[1], "wb")
        args = args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not os.access(GNU_TIME, os.X_OK):
        sys.exit(f"{GNU_TIME} is missing (apt-get install time)")
    fd, report = tempfile.mkstemp(prefix="tidegate-rss-")
    os.close(fd)
    start = time.monotonic()
    proc = subprocess.Popen([GNU_TIME, "-f", "%M", "-o", report, *args], stdout=stdout)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    with open(report) as f:
        # time writes "Command exited with non-zero status N" first when it did.
        kib = [int(line) for line in f.read().split("\n") if line.strip().isdigit()]
    os.unlink(report)
    print(json.dumps({
        "wall_s": round(wall, 4),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 4),
        "maxrss_mib": round(kib[-1] / 1024, 1) if kib else None,
        "rc": os.waitstatus_to_exitcode(status),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
