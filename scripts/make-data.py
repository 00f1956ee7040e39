#!/usr/bin/env python3
"""Write SIZE bytes of incompressible, non-repeating test data to PATH (fast: a random
16 MiB block, with each copy's first 8 bytes set to its index).

Usage: make-data.py PATH SIZE   (SIZE in bytes, or with K/M/G suffix)
"""
import os
import sys


def parse(size: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if size[-1].upper() in units:
        return int(size[:-1]) * units[size[-1].upper()]
    return int(size)


def main() -> None:
    path, size = sys.argv[1], parse(sys.argv[2])
    block = bytearray(os.urandom(16 << 20))
    with open(path, "wb") as f:
        written, i = 0, 0
        while written < size:
            block[:8] = i.to_bytes(8, "little")
            n = min(len(block), size - written)
            f.write(block[:n])
            written += n
            i += 1


if __name__ == "__main__":
    main()
