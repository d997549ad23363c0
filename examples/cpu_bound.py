"""A CPU-bound flow to compare backends with ``flowcore bench``.

    flowcore bench examples/cpu_bound.py:crunch --backends sequential,threads,loky

Pure-Python work holds the GIL, so ``threads`` cannot beat ``sequential`` here while
``loky`` (one interpreter per worker) can.
"""

from __future__ import annotations

from flowcore import flow, task


@task
def sum_of_squares(start: int, count: int) -> int:
    total = 0
    for i in range(start, start + count):
        total += i * i
    return total


@flow
def crunch(chunks: int = 8, chunk_size: int = 300_000) -> int:
    """The sum of squares below ``chunks * chunk_size``, one task per chunk."""
    futures = sum_of_squares.map(range(0, chunks * chunk_size, chunk_size), chunk_size)
    return sum(f.result() for f in futures)


if __name__ == "__main__":
    print(crunch())
