"""Registering a training run's models, with the promotion rule.

A fitted network is registered (``kind="rnn"``, its files copied into the registry)
and promoted only if it beats persistence on its validation window (mean skill over
horizons > 0). Otherwise the better baseline on that window (persistence or
seasonal-naive) is registered and promoted, so Serve always has something sound to
serve. Entries carry the validation metrics per horizon label.
"""

from __future__ import annotations

import math
import shutil
import time
from typing import Any

from aircast.forecasting import DAY_STEPS, ErrorSums, best_baseline, mean_skill, skill
from aircast.registry import Kind, ModelEntry, Registry
from training.model import FitConfig
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
    model_skill = mean_skill(metrics)
    sensor_id, measure = int(result["sensor_id"]), str(result["measure"])

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
        )

    out: list[ModelEntry] = []
    promote_rnn = bool(result["has_model"]) and math.isfinite(model_skill) and model_skill > 0
    if result["has_model"]:
        out.append(
            entry(version, "rnn", model_skill, promote_rnn, f"{measure}/{sensor_id}/{version}")
        )
    if not promote_rnn:
        kind: Kind = (
            "seasonal_naive" if best_baseline(metrics) == "seasonal_naive" else "persistence"
        )
        rows = [r for r in metrics.values() if r.get("n", 0) > 0]
        base_skill = (
            sum(skill(r[f"{kind}_mae"], r["persistence_mae"]) for r in rows) / len(rows)
            if rows
            else 0.0
        )
        out.append(entry(f"{version}-{kind}", kind, base_skill, True, None))
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
