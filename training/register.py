"""Registering a training run's models, with the promotion rule.

A fitted network is registered (``kind="rnn"``, its files copied into the registry)
and promoted when, damped towards persistence per horizon as chosen on its validation
window (:class:`training.model.Served`), it beats persistence there at some horizon;
at the horizons where it does not, its damping is 0 and it serves persistence.
Otherwise the better baseline on that window (persistence or seasonal-naive) is
registered and promoted, so Serve always has something sound to serve. Entries carry
the validation metrics per horizon label and the promoted entry the served interval.
"""

from __future__ import annotations

import math
import shutil
import time
from typing import Any

from aircast.forecasting import DAY_STEPS, ErrorSums, mean_skill, skill
from aircast.registry import Kind, ModelEntry, Registry, horizon_label
from training.model import FitConfig, Served
from training.trainer import TrainRun

MODEL_FILES = ("model.keras", "scaler.json", "result.json")


def _finite(metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {h: {k: v for k, v in row.items() if math.isfinite(v)} for h, row in metrics.items()}


def history_steps(kind: str, cfg: FitConfig) -> int:
    """How many past values Serve must pass for an entry of ``kind``."""
    if kind == "persistence":
        return cfg.window
    # The network and seasonal-naive read the same time yesterday.
    return max(cfg.window, DAY_STEPS)


def entries_for(
    result: dict[str, Any], version: str, cfg: FitConfig, trained_at: int
) -> list[ModelEntry]:
    """The registry entries of one fitted series (the promoted one last)."""
    metrics = ErrorSums.from_dict(result["val"]).metrics()
    served = Served.from_dict(result["served"])
    sensor_id, measure = int(result["sensor_id"]), str(result["measure"])
    intervals = {horizon_label(h): q for h, q in zip(cfg.horizons, served.intervals, strict=False)}

    def entry(
        version: str, kind: Kind, skill: float, promoted: bool, path: str | None
    ) -> ModelEntry:
        return ModelEntry(
            sensor_id=sensor_id,
            measure=measure,
            version=version,
            kind=kind,
            horizons=cfg.horizons,
            window=history_steps(kind, cfg),
            metrics=_finite(metrics),
            skill=skill if math.isfinite(skill) else 0.0,
            promoted=promoted,
            trained_at=trained_at,
            path=path,
            # The interval belongs to what is served: only the promoted entry has it.
            intervals=intervals if promoted else {},
            log_space=served.log,
        )

    def mean_of(name: str) -> float:
        rows = [r for r in metrics.values() if r.get("n", 0) > 0 and f"{name}_mae" in r]
        if not rows:
            return 0.0
        return sum(skill(r[f"{name}_mae"], r["persistence_mae"]) for r in rows) / len(rows)

    out: list[ModelEntry] = []
    promote_rnn = bool(result["has_model"]) and served.kind == "rnn"
    if result["has_model"]:
        for label, alpha in zip(metrics, served.blend, strict=False):
            metrics[label]["blend"] = alpha
        # A promoted network's skill is that of what it serves: damped per horizon.
        rnn_skill = mean_of("served") if promote_rnn else mean_skill(metrics)
        path = f"{measure}/{sensor_id}/{version}"
        out.append(entry(version, "rnn", rnn_skill, promote_rnn, path))
    if not promote_rnn:
        kind: Kind = "seasonal_naive" if served.kind == "seasonal_naive" else "persistence"
        out.append(entry(f"{version}-{kind}", kind, mean_of(kind), True, None))
    return out


def register_run(run: TrainRun, registry: Registry, cfg: FitConfig) -> list[ModelEntry]:
    """Register every model of ``run``; returns the entries (promoted ones included)."""
    trained_at = int(time.time())
    registered: list[ModelEntry] = []
    for key, result in sorted(run.results.items()):
        for entry in entries_for(result, run.name, cfg, trained_at):
            if entry.kind == "rnn":
                target = registry.version_dir(entry.measure, entry.sensor_id, entry.version)
                target.mkdir(parents=True, exist_ok=True)
                for name in MODEL_FILES:
                    shutil.copy2(run.model_dir(key) / name, target / name)
            registered.append(registry.register(entry))
    return registered
