#!/usr/bin/env python3
"""Prints the largest allocation sites of a dhat JSON profile: at the global peak (t-gmax),
at the end (t-end), and by allocation count.

usage: python3 profiling/top.py profiling/out/dhat-heap-send-large.json [N]
"""
import json
import sys


def frames(prof, pp, depth=6):
    out = []
    for i in pp["fs"]:
        f = prof["ftbl"][i]
        # Skip allocator and std plumbing to show where the allocation is made.
        if any(s in f for s in ("alloc::", "dhat::", "core::", "<alloc", "__rust", "hashbrown")):
            continue
        out.append(f.split(" (")[0][:150])
        if len(out) >= depth:
            break
    return out


def main():
    path = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    prof = json.load(open(path))
    pps = prof["pps"]
    for key, title in (("gb", "bytes at the global peak"), ("eb", "bytes live at the end"), ("tbk", "allocations")):
        print(f"== top {n} sites by {title}")
        for pp in sorted(pps, key=lambda p: -p.get(key, 0))[:n]:
            if not pp.get(key):
                continue
            print(f"  {pp.get(key)} ({'blocks ' + str(pp.get('gbk', 0)) if key == 'gb' else ''} total {pp['tb']} B in {pp['tbk']} allocs)")
            for f in frames(prof, pp):
                print(f"      {f}")


main()
