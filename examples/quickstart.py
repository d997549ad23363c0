"""The quickstart flow: fetch, transform in parallel, retry a flaky step, load.

Run it with ``python examples/quickstart.py`` (default backend: threads), or on
another backend: ``FLOWCORE_BACKEND=loky python examples/quickstart.py``.
"""

from __future__ import annotations

import random
import time

from flowcore import flow, get_run_context, get_run_logger, task


@task(retries=3, retry_delay_seconds=0.1)
def fetch(day: int) -> list[float]:
    """Pretend to download one day of readings; every fifth day fails once, like a network.

    The attempt number comes from the run context, so the example behaves the same on
    every backend (process workers share no module state with the flow's process).
    """
    run = get_run_context().task_run  # this run: its attempt is 1, then 2 on the first retry
    if day % 5 == 0 and run is not None and run.attempt == 1:
        raise ConnectionError(f"temporary failure fetching day {day}")
    rng = random.Random(day)
    time.sleep(0.05)  # the I/O wait that the threads backend overlaps
    return [rng.uniform(10.0, 30.0) for _ in range(24)]


@task(task_run_name="summarise-day-{day}")
def summarise(day: int, readings: list[float]) -> dict[str, float]:
    return {
        "day": day,
        "min": min(readings),
        "max": max(readings),
        "mean": sum(readings) / len(readings),
    }


@task
def report(summaries: list[dict[str, float]]) -> str:
    hottest = max(summaries, key=lambda s: s["max"])
    return f"{len(summaries)} days summarised; hottest was day {hottest['day']:.0f} at {hottest['max']:.1f} C"


@flow(log_prints=True)
def weather_report(days: int = 14) -> str:
    """Fetch `days` days of readings in parallel, summarise each, report the hottest."""
    logger = get_run_logger()
    readings = fetch.map(range(days))
    summaries = summarise.map(range(days), readings)  # futures in, resolved without blocking
    result = report.submit(summaries).result()
    logger.info("all %d days processed", days)
    print(result)
    return result


if __name__ == "__main__":
    weather_report()
