"""The pre-training phase: one network per measure, fitted on a sample of that
measure's series, whose weights start every per-sensor fine-tune.

It runs as Ray tasks before the per-series Ray Train run (:func:`training.trainer.train`):
the measures are dealt round robin to at most ``workers`` lanes, one task of
``threads_per_worker`` CPUs a lane, and each task returns its measures' weights. The
weights are small (a few thousand numbers a measure) and travel to the fine-tune run in
its config, so nothing is written to shared storage between the phases. A lane whose
worker dies is run again by Ray (``max_retries``): its measures are fitted again, which
costs one lane's minutes at most. The lanes are independent and have no barrier, so they
need none of a Ray Train run's worker group, whose start costs as much as a lane.

Its cost is bounded whatever the size of the network: at most ``pretrain_series``
series per measure (an even sample by key), so the nightly retrain grows with the
number of series only through the cheap fine-tunes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


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


def pretrain_lane(
    groups: dict[str, list[dict[str, Any]]], fit: dict[str, Any], threads: int
) -> dict[str, list[np.ndarray]]:
    """One lane: each of its measures' network, fitted in turn; measure -> weights."""
    from aircast.forecasting import Series
    from training.model import FitConfig, configure_threads, pretrain

    configure_threads(threads)
    cfg = FitConfig.from_dict(fit)
    out: dict[str, list[np.ndarray]] = {}
    for measure, group in sorted(groups.items()):
        began = time.perf_counter()
        tasks = [(Series.from_dict(t["series"]), t["split"]) for t in group]
        out[measure] = pretrain(tasks, cfg, cfg.pretrain_epochs)
        log.info(
            "pretrained measure=%s series=%d seconds=%.1f",
            measure,
            len(tasks),
            time.perf_counter() - began,
        )
    return out


def pretrain_measures(
    tasks: Sequence[dict[str, Any]],
    fit: dict[str, Any],
    *,
    lanes: int,
    threads: int,
    max_retries: int,
) -> dict[str, list[np.ndarray]]:
    """Every measure's pre-trained weights, from Ray tasks (Ray must be initialised)."""
    import ray

    groups = sample_groups(tasks, int(fit["pretrain_series"]))
    measures = sorted(groups)
    n = max(1, min(lanes, len(measures)))
    lane = ray.remote(pretrain_lane).options(
        num_cpus=threads, max_retries=max_retries, name="aircast-pretrain"
    )
    refs = [lane.remote({m: groups[m] for m in measures[i::n]}, fit, threads) for i in range(n)]
    weights: dict[str, list[np.ndarray]] = {}
    for part in ray.get(refs):
        weights.update(part)
    return weights
