"""Distinct copies of a component for the benchmarks: the same code with a
different custom section, so that each copy is compiled and kept on its own.

    python3 scripts/bench_modules.py SRC.wasm DEST_DIR N   # DEST_DIR/noop{i}.wasm
"""
import sys


def leb(x):
    out = bytearray()
    while True:
        b = x & 0x7F
        x >>= 7
        out.append(b | (0x80 if x else 0))
        if not x:
            return bytes(out)


def distinct(base, tag, pad=0):
    """`base` with a custom section holding `tag` (and `pad` zero bytes)."""
    name = b"cascade-bench"
    body = leb(len(name)) + name + tag.encode() + b"\0" * pad
    return base + b"\x00" + leb(len(body)) + body


if __name__ == "__main__":
    src, dest, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    base = open(src, "rb").read()
    for i in range(n):
        open(f"{dest}/noop{i}.wasm", "wb").write(distinct(base, str(i)))
