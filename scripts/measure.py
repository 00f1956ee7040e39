#!/usr/bin/env python3
"""Run a command and print one JSON line: wall seconds, CPU seconds, peak RSS, exit code.

Usage: measure.py [--stdout FILE] -- CMD [ARGS...]
Peak RSS comes from wait4()'s rusage (ru_maxrss), i.e. the child's VmHWM.
"""
import json
import os
import subprocess
import sys
import time


def main() -> int:
    args = sys.argv[1:]
    stdout = subprocess.DEVNULL
    if args[:1] == ["--stdout"]:
        stdout = open(args[1], "wb")
        args = args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    start = time.monotonic()
    proc = subprocess.Popen(args, stdout=stdout)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    print(json.dumps({
        "wall_s": round(wall, 4),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 4),
        "maxrss_mib": round(usage.ru_maxrss / 1024, 1),
        "rc": os.waitstatus_to_exitcode(status),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
