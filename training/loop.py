"""The Ray Train worker loop: each worker fits its own shard of (sensor, measure) series.

No distribution strategy: Keras 3 ``model.fit`` under MultiWorkerMirroredStrategy is
broken upstream, and many small independent models need none. Series are dealt round
robin (task ``i`` goes to rank ``i % world_size``); the loop runs in *slots* (slot ``s``
fits each worker's ``s``-th group of series) because ``ray.train.report`` is a barrier
every worker must reach equally often. A run has about ``reports`` slots whatever its
size: each report is a barrier and a checkpoint of every model so far, so their number
bounds that overhead, and a killed worker refits at most one slot's series.

After every slot each worker reports a checkpoint holding every model its shard has
fitted so far (``models/<measure>__<sensor>/``) and its state (``state-<rank>.json``);
Ray Train merges the workers' directories into one checkpoint. When a worker dies, Ray
Train restarts the group (``FailureConfig.max_failures``); each worker then restores
its shard's models from the latest checkpoint and skips them: a model is fitted once.

With ``init`` in the config (measure -> the pre-trained weights,
:mod:`training.pretrain`), each network is fine-tuned from its measure's weights.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MODELS = "models"


def model_dir_name(key: str) -> str:
    measure, sensor = key.split(":")
    return f"{measure}__{sensor}"


def _restore(local: Path, rank: int, shard_keys: set[str]) -> int:
    """Copy this shard's fitted models from the latest checkpoint; the next slot."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as restored:
        root = Path(restored)
        slots = [
            json.loads(p.read_text(encoding="utf-8"))["slot"] for p in root.glob("state-*.json")
        ]
        for key in shard_keys:
            src = root / MODELS / model_dir_name(key)
            if (src / "result.json").is_file():
                shutil.copytree(src, local / MODELS / model_dir_name(key), dirs_exist_ok=True)
    log.info("restored rank=%d slots_done=%s", rank, slots)
    return max(slots) + 1 if slots else 0


def _test_hooks(config: dict[str, Any], rank: int, slot: int, key: str | None) -> None:
    """Test-only: record fits, and kill this worker once at a given slot."""
    fit_log = config.get("fit_log")
    if fit_log and key:
        with open(fit_log, "a", encoding="utf-8") as fh:
            fh.write(f"{key}\n")
    kill = config.get("kill")
    if kill and kill["rank"] == rank and kill["slot"] == slot:
        marker = Path(kill["marker"])
        if not marker.exists():
            marker.write_text(str(os.getpid()), encoding="utf-8")
            time.sleep(kill.get("delay_s", 5.0))  # let the controller record the last report
            os.kill(os.getpid(), signal.SIGKILL)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train

    from aircast.forecasting import Series
    from training.model import FitConfig, configure_threads, fit_series, save

    configure_threads(int(config.get("threads", 1)))
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    cfg = FitConfig.from_dict(config["fit"])
    tasks: list[dict[str, Any]] = config["tasks"]
    shard = [t for i, t in enumerate(tasks) if i % world == rank]
    keys = [Series.from_dict(t["series"]).key for t in shard]
    longest = math.ceil(len(tasks) / world)  # the largest shard: every worker agrees
    per_slot = max(1, math.ceil(longest / max(1, int(config.get("reports", 1)))))
    slots = math.ceil(longest / per_slot)
    inits: dict[str, Any] = config.get("init") or {}  # measure -> pre-trained weights
    local = Path(tempfile.mkdtemp(prefix=f"aircast-train-r{rank}-"))
    try:
        first = _restore(local, rank, set(keys))
        for slot in range(first, slots):
            _test_hooks(config, rank, slot, None)
            for i in range(slot * per_slot, min((slot + 1) * per_slot, len(shard))):
                key = keys[i]
                if (local / MODELS / model_dir_name(key) / "result.json").is_file():
                    continue
                series = Series.from_dict(shard[i]["series"])
                result = fit_series(series, shard[i].get("split"), cfg, inits.get(series.measure))
                save(result, local / MODELS / model_dir_name(key), cfg)
                _test_hooks(config, rank, slot, key)
            state = {"slot": slot, "rank": rank, "fitted": len(list((local / MODELS).glob("*")))}
            (local / f"state-{rank}.json").write_text(json.dumps(state), encoding="utf-8")
            ray.train.report(
                {"slot": slot, "fitted": state["fitted"]},
                checkpoint=ray.train.Checkpoint.from_directory(str(local)),
                checkpoint_dir_name=f"slot_{slot:05d}",
                delete_local_checkpoint_after_upload=False,  # the next slot adds to it
            )
    finally:
        shutil.rmtree(local, ignore_errors=True)
