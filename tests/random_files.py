"""
Big files of random bytes, for the tests and the benchmark: written a chunk
at a time, never held whole in memory, with their SHA-256 computed on the
way.

Standard library only, so the benchmark (C{benchmarks/}) can use it without
the test extras.
"""

from __future__ import annotations

import hashlib
import os
import random

__all__ = ["write_random_file"]

_CHUNK = 1 << 20


def write_random_file(
    path: str | os.PathLike[str], size: int, seed: int | None = 0, chunk: int = _CHUNK
) -> str:
    """
    Write C{size} pseudo-random bytes to C{path}, C{chunk} bytes at a time,
    and return their SHA-256 hex digest.

    @param seed: the same seed gives the same bytes; None, different bytes
        at each call.
    """
    generator = random.Random(seed)
    digest = hashlib.sha256()
    remaining = size
    with open(path, "wb") as handle:
        while remaining > 0:
            block = generator.randbytes(min(chunk, remaining))
            handle.write(block)
            digest.update(block)
            remaining -= len(block)
    return digest.hexdigest()
