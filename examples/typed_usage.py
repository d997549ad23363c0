"""Typed usage: an editor (and mypy --strict) sees through @task and @flow.

``Task[P, R]`` keeps the function's parameters ``P`` and return type ``R``: calling a
task returns ``R``, ``.submit`` returns ``TaskFuture[R]``, ``.map`` a list of them.
tests/test_typing.py runs mypy --strict on this file.
"""

from __future__ import annotations

import asyncio

from flowcore import Flow, State, Task, TaskFuture, flow, task, unmapped


@task(retries=2)
def parse(line: str, sep: str = ",") -> list[int]:
    return [int(field) for field in line.split(sep)]


@task
def total(values: list[int]) -> int:
    return sum(values)


@flow(backend="threads")
def pipeline(lines: list[str]) -> int:
    parsed: list[TaskFuture[list[int]]] = parse.map(lines, unmapped(","))
    sums: list[TaskFuture[int]] = [total.submit(f.result()) for f in parsed]
    direct: int = total([1, 2, 3])
    return sum(f.result() for f in sums) + direct


@task
async def fetch(url: str) -> int:
    await asyncio.sleep(0)
    return len(url)


@flow
async def crawl(urls: list[str]) -> int:
    first: int = await fetch(urls[0])
    future: TaskFuture[int] = fetch.submit(urls[1])
    state: State[int] = fetch.submit(urls[1], return_state=True)
    mapped: list[TaskFuture[int]] = fetch.map(urls)
    rest: list[int] = list(await asyncio.gather(*(fetch(u) for u in urls[2:])))
    checked: int = state.result()
    return first + await future + sum(rest) + sum(f.result() for f in mapped) + checked


checked_task: Task[[list[int]], int] = total
checked_flow: Flow[[list[str]], int] = pipeline


if __name__ == "__main__":
    print(pipeline(["1,2", "3,4"]))
