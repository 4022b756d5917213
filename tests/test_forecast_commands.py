"""The forecasting commands as a user types them, on tiny data and the session's real
Ray: ``aircast evaluate`` on three archive days prints the served figures and the
interval coverage; ``aircast train`` and ``python -m training.job`` fit, register and
promote a model per series of a fresh aggregates database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aircast.cache import redis_client
from aircast.forecasting import DAY_STEPS
from aircast.influx import InfluxV1
from aircast.records import AGGREGATE_WINDOW_S, Aggregate
from aircast.registry import Registry
from aircast.settings import Settings

from .conftest import REPO, unique
from .test_archive import ARCHIVE

BIN = Path(sys.executable).parent
END = 1_551_398_400 + 3 * 86_400  # 2019-03-04 00:00 UTC
SENSORS = (601, 602)


def _run(argv: list[str], env: dict[str, str], timeout: float = 600) -> str:
    done = subprocess.run(
        argv,
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    return done.stdout


def _last_json(stdout: str) -> dict[str, object]:
    line = [x for x in stdout.splitlines() if x.startswith("{")][-1]
    result: dict[str, object] = json.loads(line)
    return result


@pytest.mark.slow
def test_aircast_evaluate_prints_served_skill_and_coverage(
    stack_settings: Settings, stack_dir: Path, tmp_path: Path
) -> None:
    env = {
        "AIRCAST_STACK__STATE_DIR": str(stack_dir.resolve()),
        "AIRCAST_TRAIN__STORAGE_PATH": str(tmp_path / "train"),
    }
    out = _run(
        [
            str(BIN / "aircast"), "evaluate", "--archive", str(ARCHIVE),
            "--train-start", "2019-03-01", "--train-end", "2019-03-03",
            "--test-end", "2019-03-04", "--measures", "temperature",
            "--workers", "1", "--epochs", "1", "--units", "4", "--batch-size", "256",
        ],
        env,
    )  # fmt: skip
    summary = _last_json(out)
    assert isinstance(summary["models"], int) and summary["models"] > 0
    assert isinstance(summary["seconds"], float)
    row = summary["per_measure"]["temperature"]["6h"]  # type: ignore[index]
    for name in ("model_mae", "persistence_mae", "seasonal_naive_mae", "served_mae"):
        assert row[name] > 0
    assert 0.0 <= row["coverage"] <= 1.0
    assert row["served_skill"] == pytest.approx(
        1 - row["served_mae"] / row["persistence_mae"], abs=1e-3
    )
    means = summary["mean_over_measures"]["6h"]  # type: ignore[index]
    assert means["served_skill"] == pytest.approx(row["served_skill"], abs=1e-4)


def _seed(settings: Settings) -> None:
    """Three days of a daily temperature cycle for two sensors, up to ``END``."""
    rng = np.random.default_rng(2)
    lines = []
    for sid in SENSORS:
        for k in range(3 * DAY_STEPS):
            t = END - (3 * DAY_STEPS - k) * AGGREGATE_WINDOW_S
            v = 8.0 + 4.0 * np.sin(2 * np.pi * k / DAY_STEPS) + rng.normal(0.0, 0.2)
            lines.append(
                Aggregate(
                    sid, "DHT22", sid, 57.1, -2.1, "GB", "United Kingdom", "Aberdeen",
                    "temperature", t, t + AGGREGATE_WINDOW_S, v, v, v, 1,
                ).line()
            )  # fmt: skip
    with InfluxV1(settings.influx) as influx:
        influx.ensure_databases()
        influx.write(lines, settings.influx.aggregates_database, precision="s")


@pytest.mark.slow
@pytest.mark.parametrize("command", ["aircast train", "python -m training.job"])
def test_training_commands_register_a_model_per_series(
    stack_settings: Settings, stack_dir: Path, tmp_path: Path, command: str
) -> None:
    database, prefix = unique("agg"), unique("trainc") + ":"
    settings = stack_settings.model_copy(
        update={
            "influx": stack_settings.influx.model_copy(update={"aggregates_database": database}),
            "redis": stack_settings.redis.model_copy(update={"key_prefix": prefix}),
        }
    )
    _seed(settings)
    env = {
        "AIRCAST_STACK__STATE_DIR": str(stack_dir.resolve()),
        "AIRCAST_INFLUX__AGGREGATES_DATABASE": database,
        "AIRCAST_REDIS__KEY_PREFIX": prefix,
        "AIRCAST_TRAIN__STORAGE_PATH": str(tmp_path / "train"),
        "AIRCAST_TRAIN__REGISTRY_DIR": str(tmp_path / "models"),
        "AIRCAST_TRAIN__MEASURES": '["temperature"]',
        "AIRCAST_TRAIN__HISTORY_DAYS": "3",
        "AIRCAST_TRAIN__WINDOW": "12",
        "AIRCAST_TRAIN__EPOCHS": "2",
        "AIRCAST_TRAIN__UNITS": "4",
        "AIRCAST_TRAIN__WORKERS": "1",
    }
    argv = (
        [str(BIN / "aircast"), "train"]
        if command == "aircast train"
        else [sys.executable, "-m", "training.job"]
    )
    summary = _last_json(_run([*argv, "--end", str(END)], env))
    assert summary["series"] == len(SENSORS) and summary["models"] == len(SENSORS)
    registry = Registry(tmp_path / "models", redis_client(settings.redis), prefix)
    latest = {e.sensor_id: e for e in registry.all_latest()}
    assert set(latest) == set(SENSORS)
    for entry in latest.values():
        assert entry.promoted and set(entry.intervals) == {"10m", "1h", "6h"}
