"""Training on the session's real Ray cluster (Ray Train, 2 workers): registered models
load and predict through the Serve contract; a worker killed mid-run is restarted and
resumes from its checkpoint without refitting the models already checkpointed."""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from aircast.cache import redis_client
from aircast.forecasting import DAY_STEPS, Series
from aircast.registry import Registry
from aircast.settings import Settings
from training.model import FitConfig
from training.predict import load_model, predict
from training.register import register_run
from training.trainer import TrainRun, train

from .conftest import unique

# Ray Train builds a Ray Data context, which warns about its own deprecated options.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

T0 = 1_551_398_400
CFG = FitConfig(window=12, horizons=(1, 6, 36), epochs=2, batch_size=256, units=8, patience=1)


def _series(sensor: int, measure: str, days: int = 4, seed: int = 0) -> Series:
    rng = np.random.default_rng(seed)
    t = np.arange(days * DAY_STEPS)
    values = 10 + 5 * np.sin(2 * np.pi * t / DAY_STEPS) + np.cumsum(rng.normal(0, 0.3, t.size))
    values[rng.choice(t.size, t.size // 20, replace=False)] = np.nan  # gaps
    return Series(sensor, measure, T0, np.clip(values, 0, None))


@dataclass
class KilledRun:
    settings: Settings
    run: TrainRun
    series: list[Series]
    fit_log: Path
    marker: Path


SPECS = ((11, "P1"), (12, "temperature"), (13, "humidity"), (15, "P1"))


@pytest.fixture(scope="module")
def killed_run(
    stack_settings: Settings, ray_session: Settings, tmp_path_factory: pytest.TempPathFactory
) -> KilledRun:
    """One Ray Train run (2 workers) in which rank 0 is SIGKILLed mid-run.

    Rank 0 kills itself at the start of slot 1, after slot 0 was checkpointed; Ray Train
    restarts the worker group and both workers resume from the checkpoint.
    """
    tmp = tmp_path_factory.mktemp("train")
    t = stack_settings.train.model_copy(
        update={"storage_path": tmp / "train", "registry_dir": tmp / "models"}
    )
    r = stack_settings.redis.model_copy(update={"key_prefix": unique("train") + ":"})
    settings = stack_settings.model_copy(update={"train": t, "redis": r})
    series = [_series(s, m, seed=s) for s, m in SPECS]
    tiny = Series(14, "P2", T0, np.full(50, 3.0))  # too little data: baseline only
    fit_log, marker = tmp / "fits.log", tmp / "killed"
    hooks = {
        "fit_log": str(fit_log),
        "kill": {"rank": 0, "slot": 1, "marker": str(marker), "delay_s": 5.0},
    }
    tasks = [(s, None) for s in [*series, tiny]]
    run = train(settings, tasks, workers=2, cfg=CFG, max_failures=2, hooks=hooks)
    return KilledRun(settings, run, [*series, tiny], fit_log, marker)


@pytest.mark.slow
def test_killed_worker_resumes(killed_run: KilledRun) -> None:
    assert killed_run.marker.exists()
    killed_pid = int(killed_run.marker.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(killed_pid, 0)
    keys = {s.key for s in killed_run.series}
    assert set(killed_run.run.results) == keys
    fits = Counter(killed_run.fit_log.read_text().split())
    assert set(fits) == keys
    # Tasks are dealt longest first, then by key: slot 0 holds the first two keys of
    # the same-sized series, checkpointed before the kill, so never fitted again. Rank
    # 1 may have been inside slot 1's fit when rank 0 died: that one fit (not
    # checkpointed) may be repeated.
    ordered = sorted(s.key for s in killed_run.series[:-1])
    assert fits[ordered[0]] == 1 and fits[ordered[1]] == 1
    assert sum(fits.values()) <= len(keys) + 1


@pytest.mark.slow
def test_registered_models_load_and_predict(killed_run: KilledRun) -> None:
    settings, run = killed_run.settings, killed_run.run
    registry = Registry(
        settings.train.registry_dir, redis_client(settings.redis), settings.redis.key_prefix
    )
    entries = register_run(run, registry, CFG)
    latest = {(e.measure, e.sensor_id): e for e in registry.all_latest()}
    assert set(latest) == {(m, s) for s, m in SPECS} | {("P2", 14)}
    assert latest[("P2", 14)].kind in ("persistence", "seasonal_naive")
    rnn = [e for e in entries if e.kind == "rnn"]
    assert {e.sensor_id for e in rnn} == {s for s, _ in SPECS}
    for entry in rnn:
        assert entry.window == DAY_STEPS  # the network reads the same time yesterday
        assert set(entry.metrics) == {"10m", "1h", "6h"}
        assert registry.versions(entry.sensor_id, entry.measure)[0].kind == "rnn"
        path = registry.model_path(entry)
        assert path is not None
        model = load_model(path)
        history = _series(entry.sensor_id, entry.measure, seed=entry.sensor_id).values[
            -entry.window :
        ]
        forecast = predict(model, entry, history, T0 + 3 * 86_400)
        assert set(forecast) == {1, 6, 36}
        assert all(math.isfinite(v) for v in forecast.values())
        # Also through the model file itself, and a history with a gap at the end.
        gap = history.copy()
        gap[-1] = np.nan
        assert set(predict(load_model(path / "model.keras"), entry, gap, T0)) == {1, 6, 36}
        # A promoted entry wins the pointer and carries the served interval; an
        # unpromoted network stays registered, without one.
        if entry.promoted:
            assert set(entry.intervals) == {"10m", "1h", "6h"}
            assert all(lo <= 0 <= hi for lo, hi in entry.intervals.values())
        else:
            assert latest[(entry.measure, entry.sensor_id)].kind != "rnn"
            assert entry.intervals == {}
    baseline = latest[("P2", 14)]
    assert predict(None, baseline, np.full(baseline.window, 3.0), T0) == {1: 3.0, 6: 3.0, 36: 3.0}
