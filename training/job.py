"""The training job: ``ray job submit -- python -m training.job [--every SECONDS]``.

Reads the last ``train.history_days`` of 10-minute aggregates from InfluxDB, fits one
model per (sensor, measure) on Ray Train, registers them (promotion rule in
:mod:`training.register`), removes the run's checkpoints and prints one JSON line.
With ``--every`` it repeats (scheduled retraining; ``--every`` alone uses
``train.retrain_interval_s``); a failed round is logged and retried next round.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

from aircast import options
from aircast.cache import redis_client
from aircast.errors import AircastError
from aircast.forecasting import STEP_S
from aircast.registry import Registry
from aircast.settings import Settings, load_settings

log = logging.getLogger("training.job")


def registry_of(settings: Settings) -> Registry:
    root = settings.train.registry_dir.expanduser().resolve()
    return Registry(root, redis_client(settings.redis), settings.redis.key_prefix)


def run_once(
    settings: Settings, *, end: int | None = None, workers: int | None = None
) -> dict[str, Any]:
    """One training round; returns its summary."""
    from training.data import load_series
    from training.register import register_run
    from training.trainer import cleanup, fit_config, train

    now = int(time.time()) if end is None else end
    end = now - now % STEP_S
    start = end - settings.train.history_days * 86_400
    series = load_series(settings, start, end)
    if not series:
        log.warning("no aggregates to train on start=%d end=%d", start, end)
        return {"models": 0, "promoted": {}, "seconds": 0.0}
    cfg = fit_config(settings)
    run = train(settings, [(s, None) for s in series], workers=workers, cfg=cfg)
    entries = register_run(run, registry_of(settings), cfg)
    cleanup(run, settings)
    promoted: dict[str, int] = {}
    for e in entries:
        if e.promoted:
            promoted[e.kind] = promoted.get(e.kind, 0) + 1
    return {
        "run": run.name,
        "series": len(series),
        "models": sum(1 for e in entries if e.kind == "rnn"),
        "promoted": promoted,
        "seconds": round(run.seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.job", description=__doc__)
    options.add_config(parser)
    options.add_train(parser)
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    from aircast.localhost import ray_environment

    for name, value in ray_environment().items():
        os.environ.setdefault(name, value)  # before Ray is imported: stay on 127.0.0.1
    import ray

    ray.init(address=settings.ray.address or "auto", namespace=settings.ray.namespace)
    every = settings.train.retrain_interval_s if args.every == -1.0 else args.every
    while True:
        began = time.monotonic()
        try:
            print(json.dumps(run_once(settings, end=args.end, workers=args.workers)), flush=True)
        except (AircastError, RuntimeError) as exc:
            if every is None:
                raise
            log.error("training round failed, retrying next round error=%s", exc)
        if every is None:
            return 0
        time.sleep(max(0.0, every - (time.monotonic() - began)))


if __name__ == "__main__":
    sys.exit(main())
