"""Builds and runs the Ray Train trainer for a set of series; collects what it fitted.

Each run has a unique name and an explicit absolute storage path
(``settings.train.storage_path``), so runs never share checkpoints and a restarted
worker finds its own. The worker loop is :func:`training.loop.train_loop_per_worker`.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aircast.forecasting import Series
from aircast.settings import Settings
from training.loop import MODELS, model_dir_name, train_loop_per_worker
from training.model import FitConfig
from training.pretrain import pretrain_measures

log = logging.getLogger(__name__)


def fit_config(settings: Settings, **overrides: Any) -> FitConfig:
    t = settings.train
    base = {
        "window": t.window,
        "horizons": tuple(t.horizons),
        "epochs": t.epochs,
        "batch_size": t.batch_size,
        "units": t.units,
        "patience": t.patience,
        "pretrain_epochs": t.pretrain_epochs,
        "pretrain_series": t.pretrain_series,
        "finetune": t.finetune,
    }
    return FitConfig(**{**base, **overrides})


@dataclass
class TrainRun:
    name: str
    checkpoint_dir: Path  # the final merged checkpoint (models/<measure>__<sensor>/)
    results: dict[str, dict[str, Any]]  # key -> result.json
    seconds: float  # the whole run, pre-training included
    workers: int
    pretrain_seconds: float = 0.0

    def model_dir(self, key: str) -> Path:
        return self.checkpoint_dir / MODELS / model_dir_name(key)


def run_name(prefix: str = "aircast-train") -> str:
    return f"{prefix}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def train(
    settings: Settings,
    tasks: Sequence[tuple[Series, int | None]],
    *,
    workers: int | None = None,
    cfg: FitConfig | None = None,
    name: str | None = None,
    max_failures: int = 2,
    hooks: dict[str, Any] | None = None,
) -> TrainRun:
    """Fit one model per (series, split) on Ray Train (Ray must be initialised)."""
    import ray.train

    # Ray Train's generic trainer, not TensorflowTrainer: each worker fits its own small
    # Keras models, so the TF_CONFIG cluster spec TensorflowTrainer sets up (for a
    # multi-worker strategy) has no use, and importing it loads TensorFlow into the
    # driver and the Train controller: about 10 s of CPU each, every run.
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    workers = workers or settings.train.workers
    cfg = cfg or fit_config(settings)
    name = name or run_name()
    storage = settings.train.storage_path.expanduser().resolve()
    storage.mkdir(parents=True, exist_ok=True)
    # Longest series first: the slowest fits start early, shards stay balanced.
    task_dicts = [
        {"series": s.to_dict(), "split": split}
        for s, split in sorted(tasks, key=lambda t: (-t[0].values.size, t[0].key))
    ]
    began = time.perf_counter()
    init: dict[str, Any] = {}
    if cfg.pretrain_epochs > 0:
        init = pretrain_measures(
            task_dicts,
            cfg.to_dict(),
            lanes=workers,
            threads=settings.train.threads_per_worker,
            max_retries=max_failures,
        )
    pretrain_seconds = time.perf_counter() - began
    config: dict[str, Any] = {
        "fit": cfg.to_dict(),
        "threads": settings.train.threads_per_worker,
        "tasks": task_dicts,
        "init": init,
        "reports": settings.train.reports_per_run,
        **(hooks or {}),
    }
    trainer = DataParallelTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, resources_per_worker={"CPU": settings.train.threads_per_worker}
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            # Every checkpoint holds all models so far: the latest one is enough.
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    seconds = time.perf_counter() - began
    if result.checkpoint is None:
        raise RuntimeError(f"training run {name} reported no checkpoint")
    checkpoint_dir = Path(result.checkpoint.path)
    results: dict[str, dict[str, Any]] = {}
    for path in sorted((checkpoint_dir / MODELS).glob("*/result.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        results[data["key"]] = data
    missing = {s.key for s, _ in tasks} - set(results)
    if missing:
        raise RuntimeError(f"training run {name} lacks models for {sorted(missing)}")
    log.info("trained run=%s models=%d seconds=%.1f", name, len(results), seconds)
    return TrainRun(name, checkpoint_dir, results, seconds, workers, pretrain_seconds)


def cleanup(run: TrainRun, settings: Settings) -> None:
    """Remove a run's checkpoints (after its models are registered elsewhere)."""
    storage = settings.train.storage_path.expanduser().resolve()
    shutil.rmtree(storage / run.name, ignore_errors=True)
