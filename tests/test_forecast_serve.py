"""A model trained on Ray Train, registered and promoted, then served by the API: the
forecast says ``served_by: "model"`` and every point carries its 80 % interval."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest

from aircast.cache import redis_client
from aircast.forecasting import DAY_STEPS, Series
from aircast.influx import InfluxV1
from aircast.records import AGGREGATE_WINDOW_S, Aggregate
from aircast.registry import ModelEntry, Registry
from aircast.settings import Settings
from training.model import FitConfig
from training.register import register_run
from training.trainer import cleanup, train

from .test_serve_api import RAY_SERVE_WARNINGS, serve_settings

pytestmark = [
    RAY_SERVE_WARNINGS,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context"),
]

SENSOR = 501
CFG = FitConfig(window=12, horizons=(1, 6, 36), epochs=15, batch_size=64, units=8)


def _cycle(start: int, steps: int, seed: int) -> np.ndarray:
    """A daily cycle in phase with the clock, plus noise: learnable from time of day."""
    rng = np.random.default_rng(seed)
    times = start + np.arange(steps) * AGGREGATE_WINDOW_S
    angle = 2 * np.pi * (times % 86_400) / 86_400
    return 15.0 + 6.0 * np.sin(angle) + rng.normal(0.0, 0.3, steps)


@dataclass(frozen=True)
class Served:
    url: str
    entry: ModelEntry


@pytest.fixture(scope="module")
def served(ray_session: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from ray import serve

    from serve.deploy import deploy

    tmp = tmp_path_factory.mktemp("forecast-serve")
    settings = serve_settings(ray_session, tmp / "registry")
    settings = settings.model_copy(
        update={"train": settings.train.model_copy(update={"storage_path": tmp / "train"})}
    )
    now = int(time.time())
    last = now - now % AGGREGATE_WINDOW_S - AGGREGATE_WINDOW_S
    steps = 6 * DAY_STEPS
    start = last - (steps - 1) * AGGREGATE_WINDOW_S
    series = Series(SENSOR, "temperature", start, _cycle(start, steps, seed=1))
    run = train(settings, [(series, None)], workers=1, cfg=CFG)
    registry = Registry(
        settings.train.registry_dir, redis_client(settings.redis), settings.redis.key_prefix
    )
    register_run(run, registry, CFG)
    cleanup(run, settings)
    entry = registry.latest(SENSOR, "temperature")
    assert entry is not None
    lines = [
        Aggregate(
            SENSOR, "DHT22", 51, 57.1, -2.1, "GB", "United Kingdom", "Aberdeen", "temperature",
            t, t + AGGREGATE_WINDOW_S, float(v), float(v), float(v), 1,
        ).line()
        for t, v in zip(
            range(start, last + 1, AGGREGATE_WINDOW_S)[-DAY_STEPS:],
            series.values[-DAY_STEPS:],
            strict=True,
        )
    ]  # fmt: skip
    with InfluxV1(settings.influx) as influx:
        influx.ensure_databases()
        influx.write(lines, settings.influx.aggregates_database, precision="s")
    urls = deploy(settings)
    try:
        yield Served(urls.base, entry)
    finally:
        serve.shutdown()


@pytest.mark.slow
def test_a_promoted_model_serves_with_an_interval(served: Served) -> None:
    assert served.entry.kind == "rnn" and served.entry.promoted
    assert set(served.entry.intervals) == {"10m", "1h", "6h"}
    with httpx.Client(base_url=served.url, timeout=120.0) as client:
        body = client.get(f"/sensors/{SENSOR}/forecast", params={"measure": "temperature"}).json()
    assert body["served_by"] == "model", body["note"]
    assert body["model"]["kind"] == "rnn" and body["model"]["version"] == served.entry.version
    assert [p["horizon"] for p in body["points"]] == ["10m", "1h", "6h"]
    for point in body["points"]:
        assert point["low"] <= point["value"] <= point["high"]
        assert point["low"] < point["high"]
