"""The pre-training phase: one network per measure, fitted on a sample of that
measure's series, whose weights start every per-sensor fine-tune.

It is a Ray Train run of its own before the per-series run
(:func:`training.trainer.train`): measures are dealt round robin to the workers and
fitted in slots, like the series in :mod:`training.loop`, because ``ray.train.report``
is a barrier. Each worker's checkpoint holds ``global/<measure>.npz`` (the weights);
Ray Train merges them, and the per-series run reads the merged checkpoint's folder.
A restarted worker restores the measures already checkpointed and skips them.

Its cost is bounded whatever the size of the network: at most ``pretrain_series``
series per measure (an even sample by key), so the nightly retrain grows with the
number of series only through the cheap fine-tunes.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

GLOBAL = "global"


def sample_groups(tasks: Sequence[dict[str, Any]], per_measure: int) -> dict[str, list[Any]]:
    """Task dicts grouped by measure, at most ``per_measure`` each (evenly by key)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for t in sorted(tasks, key=lambda t: (t["series"]["measure"], t["series"]["sensor_id"])):
        groups.setdefault(str(t["series"]["measure"]), []).append(t)
    out: dict[str, list[Any]] = {}
    for measure, group in groups.items():
        stride = max(1, math.ceil(len(group) / per_measure))
        out[measure] = group[::stride][:per_measure]
    return out


def save_weights(weights: Sequence[np.ndarray], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, *weights)
    tmp.replace(path)


def load_weights(path: Path) -> list[np.ndarray]:
    with np.load(path) as npz:
        return [npz[f"arr_{i}"] for i in range(len(npz.files))]


def init_weights(init_dir: str | None, measure: str) -> list[np.ndarray] | None:
    """The pre-trained weights of ``measure`` (None: no pre-training, or none for it)."""
    if not init_dir:
        return None
    path = Path(init_dir) / f"{measure}.npz"
    return load_weights(path) if path.is_file() else None


def _restore(local: Path, mine: Sequence[str]) -> None:
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return
    with checkpoint.as_directory() as restored:
        for measure in mine:
            src = Path(restored) / GLOBAL / f"{measure}.npz"
            if src.is_file():
                (local / GLOBAL).mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, local / GLOBAL / src.name)


def pretrain_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train

    from aircast.forecasting import Series
    from training.model import FitConfig, configure_threads, pretrain

    configure_threads(int(config.get("threads", 1)))
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    cfg = FitConfig.from_dict(config["fit"])
    groups: dict[str, list[dict[str, Any]]] = config["groups"]
    measures = sorted(groups)
    mine = measures[rank::world]
    local = Path(tempfile.mkdtemp(prefix=f"aircast-pretrain-r{rank}-"))
    try:
        _restore(local, mine)
        for slot in range(math.ceil(len(measures) / world)):
            if slot < len(mine):
                measure = mine[slot]
                target = local / GLOBAL / f"{measure}.npz"
                if not target.is_file():
                    tasks = [(Series.from_dict(t["series"]), t["split"]) for t in groups[measure]]
                    save_weights(pretrain(tasks, cfg, cfg.pretrain_epochs), target)
                    log.info("pretrained measure=%s series=%d", measure, len(tasks))
            ray.train.report(
                {"slot": slot},
                checkpoint=ray.train.Checkpoint.from_directory(str(local)),
                checkpoint_dir_name=f"pretrain_{slot:03d}",
                delete_local_checkpoint_after_upload=False,  # the next slot adds to it
            )
    finally:
        shutil.rmtree(local, ignore_errors=True)
