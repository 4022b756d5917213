"""Serve benchmark: forecast lookups against a no-op Serve deployment, same run.

Starts its own stack (redis, influxdb, ray) in a temporary folder, writes 10-minute
aggregates for ``SENSORS`` sensors, deploys the aircast app and beside it a no-op
FastAPI deployment with the same replica options, waits until the refresher has
stored every forecast, then drives ``GET /sensors/{id}/forecast?measure=P2`` (random
sensors, all cached: the lookup path) and ``GET /noop/ping`` at concurrency 32 from one
asyncio client on 127.0.0.1, alternating rounds so machine noise hits both alike.
Bounded: ``REQUESTS`` per round and ``ROUND_TIMEOUT_S`` per round.

Last line: JSON with p50/p99 latency and req/s of both, and the ratio
forecast req/s / no-op req/s (target >= 0.8).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aircast.localhost import ray_environment

for _name, _value in ray_environment().items():  # before Ray is imported
    os.environ.setdefault(_name, _value)

import httpx  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from aircast.errors import StackError  # noqa: E402
from aircast.influx import InfluxV1  # noqa: E402
from aircast.records import AGGREGATE_WINDOW_S, Aggregate  # noqa: E402
from aircast.retry import Backoff, retrying  # noqa: E402
from aircast.settings import Settings, StackSettings  # noqa: E402
from aircast_cli.stack import control  # noqa: E402

log = logging.getLogger(__name__)

CONCURRENCY = 32
SENSORS = 200
REQUESTS = 2_000
WARMUP = 300
ROUNDS = 3
ROUND_TIMEOUT_S = 60.0
TARGET = 0.8
ADMIN = "bench-admin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed(settings: Settings) -> None:
    now = int(time.time())
    last = now - now % AGGREGATE_WINDOW_S - AGGREGATE_WINDOW_S
    lines = [
        Aggregate(
            sid, "SDS011", sid, 48.0 + sid / 1000, 9.0 + sid / 1000, "DE", "Germany", "X",
            "P2", last - k * AGGREGATE_WINDOW_S, last - (k - 1) * AGGREGATE_WINDOW_S,
            10.0 + k, 9.0, 11.0, 5,
        ).line()
        for sid in range(1, SENSORS + 1)
        for k in range(36)
    ]  # fmt: skip
    with InfluxV1(settings.influx) as influx:
        influx.ensure_databases()
        influx.write(lines, settings.influx.aggregates_database, precision="s")


def deploy_noop(settings: Settings) -> None:
    """A FastAPI ingress that does nothing, with the app's replica options."""
    from fastapi import FastAPI
    from ray import serve

    from serve.deploy import QUIET

    noop = FastAPI()

    class NoOp:
        @noop.get("/ping", response_model=None)
        async def ping(self) -> dict[str, str]:
            return {"status": "ok"}

    # Applied as calls, not as class decorators: mypy keeps a decorated class's own type.
    deployment = serve.deployment(
        num_replicas=settings.serve.replicas,
        max_ongoing_requests=settings.serve.max_ongoing_requests,
    )(serve.ingress(noop)(NoOp))
    serve.run(deployment.bind(), name="noop", route_prefix="/noop", logging_config=QUIET)


def wait_for_forecasts(base: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {ADMIN}"}
    while time.monotonic() < deadline:
        status = httpx.get(f"{base}/admin/refresh", headers=headers, timeout=30).json()
        if status.get("forecasts", 0) >= SENSORS:
            return
        time.sleep(1.0)
    raise SystemExit("forecasts were not refreshed in time")


async def drive(urls: list[str], count: int) -> dict[str, float]:
    """``count`` GETs at concurrency CONCURRENCY; latency percentiles and req/s."""
    latencies: list[float] = []
    errors = 0
    queue = iter(random.choices(urls, k=count))
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)

    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:

        async def worker(deadline: float) -> None:
            nonlocal errors
            for url in queue:
                if time.monotonic() > deadline:
                    return
                t0 = time.perf_counter()
                r = await client.get(url)
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors += 1

        started = time.perf_counter()
        deadline = time.monotonic() + ROUND_TIMEOUT_S
        await asyncio.gather(*(worker(deadline) for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "errors": errors,
        "rps": n / elapsed,
        "p50_ms": 1000 * latencies[n // 2],
        "p99_ms": 1000 * latencies[min(n - 1, int(n * 0.99))],
    }


def combine(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {
        "requests": sum(r["requests"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
        "rps": round(sum(r["rps"] for r in rounds) / len(rounds), 1),
        "p50_ms": round(sorted(r["p50_ms"] for r in rounds)[len(rounds) // 2], 2),
        "p99_ms": round(max(r["p99_ms"] for r in rounds), 2),
    }


def start_stack(base: Settings, attempts: int = 3) -> None:
    """Our own stack (no Kafka needed). On a loaded machine Ray's head sometimes gives
    up waiting for its own agents; a fresh start usually succeeds."""

    def up() -> None:
        try:
            control.up(base, services=("redis", "influxdb", "ray"))
        except StackError:
            control.down(base)
            raise

    policy = retrying(
        attempts=attempts,
        backoff=Backoff(first_s=2.0, max_s=10.0),
        retry_on=lambda exc: isinstance(exc, StackError),
        log=log,
        event="stack start failed",
    )
    policy(up)


def run(state_dir: Path) -> dict[str, Any]:
    # A loaded 2-core machine can take minutes to bring a Ray head up.
    base = Settings(stack=StackSettings(state_dir=state_dir, startup_timeout_s=300.0))
    start_stack(base)
    try:
        stack = control.load_stack_settings(base, state_dir.resolve())
        settings = stack.model_copy(
            update={
                "serve": stack.serve.model_copy(
                    update={"port": free_port(), "admin_token": SecretStr(ADMIN)}
                ),
                "train": stack.train.model_copy(update={"registry_dir": state_dir / "models"}),
            }
        )
        seed(settings)
        from ray import serve

        from serve.deploy import deploy

        urls = deploy(settings)
        try:
            deploy_noop(settings)
            wait_for_forecasts(urls.base)
            forecast_urls = [
                f"{urls.base}/sensors/{sid}/forecast?measure=P2" for sid in range(1, SENSORS + 1)
            ]
            noop_urls = [f"{urls.base}/noop/ping"]
            asyncio.run(drive(forecast_urls, WARMUP))
            asyncio.run(drive(noop_urls, WARMUP))
            forecast_rounds, noop_rounds = [], []
            for _ in range(ROUNDS):
                noop_rounds.append(asyncio.run(drive(noop_urls, REQUESTS)))
                forecast_rounds.append(asyncio.run(drive(forecast_urls, REQUESTS)))
                print("round", {"noop": noop_rounds[-1], "forecast": forecast_rounds[-1]})
        finally:
            serve.shutdown()  # type: ignore[no-untyped-call]  # unannotated in Ray Serve
    finally:
        control.down(base)
    forecast, noop = combine(forecast_rounds), combine(noop_rounds)
    return {
        "bench": "serve",
        "concurrency": CONCURRENCY,
        "sensors": SENSORS,
        "forecast_lookup": forecast,
        "noop": noop,
        "ratio": round(forecast["rps"] / noop["rps"], 3),
        "target": TARGET,
    }


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="aircast-bench-serve-"))
    result = run(tmp / "stack")  # on failure the folder stays, with the services' logs
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
