"""The training job as the README gives it for a cluster, ``ray job submit -- python -m
training.job``, then the API that serves what it trained.

The job fits, registers and promotes a model per series of a fresh aggregates database
on the session's real Ray (Ray Train), in the project's environment the local head
gives its jobs; Serve then answers ``/sensors/{id}/forecast`` with ``served_by:
"model"``, the promoted version, and an 80 % interval on every point. (``aircast train``
runs the same ``training.job`` main: tests/test_commands.py runs it as a command.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from aircast.cache import redis_client
from aircast.forecasting import DAY_STEPS
from aircast.records import AGGREGATE_WINDOW_S
from aircast.registry import ModelEntry, Registry
from aircast.settings import Settings

from .helpers import last_json, ray_job_submit, seed_daily_cycles
from .test_serve_api import RAY_SERVE_WARNINGS, delete_app, serve_settings

pytestmark = [
    RAY_SERVE_WARNINGS,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context"),
]

SENSORS = (501, 502)
DAYS = 4


@dataclass(frozen=True)
class Served:
    url: str
    summary: dict[str, object]
    latest: dict[int, ModelEntry]


@pytest.fixture(scope="module")
def served(ray_session: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from serve.deploy import deploy

    tmp = tmp_path_factory.mktemp("forecast-serve")
    settings = serve_settings(ray_session, tmp / "registry")
    now = int(time.time())
    end = now - now % AGGREGATE_WINDOW_S  # the newest window ends here
    steps = DAYS * DAY_STEPS
    seed_daily_cycles(settings, SENSORS, end - steps * AGGREGATE_WINDOW_S, steps)
    # The job finds the stack's addresses itself (the local head gives them to its jobs);
    # the rest comes from the job's runtime environment.
    env = {
        "AIRCAST_INFLUX__AGGREGATES_DATABASE": settings.influx.aggregates_database,
        "AIRCAST_INFLUX__PREDICTIONS_DATABASE": settings.influx.predictions_database,
        "AIRCAST_REDIS__KEY_PREFIX": settings.redis.key_prefix,
        "AIRCAST_TRAIN__STORAGE_PATH": str(tmp / "train"),
        "AIRCAST_TRAIN__REGISTRY_DIR": str(settings.train.registry_dir),
        "AIRCAST_TRAIN__MEASURES": '["temperature"]',
        "AIRCAST_TRAIN__HISTORY_DAYS": str(DAYS),
        "AIRCAST_TRAIN__WINDOW": "12",
        "AIRCAST_TRAIN__EPOCHS": "10",
        "AIRCAST_TRAIN__UNITS": "8",
        "AIRCAST_TRAIN__WORKERS": "1",
    }
    out = ray_job_submit(ray_session, "python", "-m", "training.job", "--end", str(end), env=env)
    summary = last_json(out)
    registry = Registry(
        settings.train.registry_dir, redis_client(settings.redis), settings.redis.key_prefix
    )
    latest = {e.sensor_id: e for e in registry.all_latest()}
    urls = deploy(settings)
    try:
        yield Served(urls.base, summary, latest)
    finally:
        delete_app()


@pytest.mark.slow
def test_the_training_job_registers_and_promotes_a_model_per_series(served: Served) -> None:
    assert served.summary["series"] == len(SENSORS), served.summary
    assert served.summary["models"] == len(SENSORS), served.summary
    assert set(served.latest) == set(SENSORS)
    for entry in served.latest.values():
        assert entry.promoted and set(entry.intervals) == {"10m", "1h", "6h"}


@pytest.mark.slow
@pytest.mark.parametrize("sensor", SENSORS)
def test_a_promoted_model_serves_with_an_interval(served: Served, sensor: int) -> None:
    entry = served.latest[sensor]
    assert entry.kind == "rnn" and entry.promoted
    with httpx.Client(base_url=served.url, timeout=120.0) as client:
        body = client.get(f"/sensors/{sensor}/forecast", params={"measure": "temperature"}).json()
    assert body["served_by"] == "model", body["note"]
    assert body["model"]["kind"] == "rnn" and body["model"]["version"] == entry.version
    assert [p["horizon"] for p in body["points"]] == ["10m", "1h", "6h"]
    for point in body["points"]:
        assert point["low"] <= point["value"] <= point["high"]
        assert point["low"] < point["high"]
