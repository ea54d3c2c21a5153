"""BYTES codec speed: dynamo_triton.tensors against a naive per-element Python loop, side by side.

Run: ``.venv/bin/python benchmarks/bench_bytes_codec.py [--elements N] [--repeat R]``.
Prints milliseconds per call (best of R) and the speed-up ratio naive / ours for
encode, decode (mixed lengths and equal lengths) and count_bytes_elements.
Not a test: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import random
import struct
import timeit
from collections.abc import Callable

import numpy as np

from dynamo_triton.tensors import count_bytes_elements, decode_bytes, encode_bytes

_LEN = struct.Struct("<I")


def naive_encode(array: np.ndarray) -> bytes:
    """The obvious loop: pack each length, append each element."""
    out = bytearray()
    for item in array.reshape(-1):
        out += _LEN.pack(len(item))
        out += item
    return bytes(out)


def naive_decode(raw: bytes) -> np.ndarray:
    """The obvious loop: read a length, slice, advance."""
    items, offset = [], 0
    while offset < len(raw):
        (length,) = _LEN.unpack_from(raw, offset)
        offset += 4
        items.append(raw[offset : offset + length])
        offset += length
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def naive_count(raw: bytes) -> int:
    count, offset = 0, 0
    while offset < len(raw):
        (length,) = _LEN.unpack_from(raw, offset)
        offset += 4 + length
        count += 1
    return count


def best_ms(func: Callable[[], object], repeat: int) -> float:
    return min(timeit.repeat(func, number=1, repeat=repeat)) * 1e3


def compare(label: str, naive: Callable[[], object], ours: Callable[[], object], repeat: int) -> None:
    a, b = best_ms(naive, repeat), best_ms(ours, repeat)
    print(f"{label:<44} naive {a:9.3f} ms   ours {b:9.3f} ms   ratio {a / b:5.2f}x")


def run_case(name: str, items: list[bytes], repeat: int) -> None:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    raw = encode_bytes(array)
    assert raw == naive_encode(array) and decode_bytes(raw).tolist() == items
    print(f"--- {len(items)} elements, {name}, {len(raw) / 1e6:.1f} MB")
    compare("encode_bytes", lambda: naive_encode(array), lambda: encode_bytes(array), repeat)
    compare("decode_bytes", lambda: naive_decode(raw), lambda: decode_bytes(raw), repeat)
    compare("count_bytes_elements", lambda: naive_count(raw), lambda: count_bytes_elements(raw), repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(0)
    cases = {
        "mixed 0..64 B": [rng.randbytes(rng.randint(0, 64)) for _ in range(args.elements)],
        "equal 16 B": [rng.randbytes(16) for _ in range(args.elements)],
        "mixed 0..64 KiB (1/100 of the count)": [
            rng.randbytes(rng.randint(0, 65536)) for _ in range(max(1, args.elements // 100))
        ],
    }
    for name, items in cases.items():
        run_case(name, items, args.repeat)


if __name__ == "__main__":
    main()
