"""make bench-train: fit every sensor × measure of two weeks of the archive (the nightly
retrain's ``train.history_days``) on Ray Train, with 1 and with 2 workers (a private Ray
head), same models, same settings (pre-training, fine-tune, epochs).

Reports wall time of each run, mean seconds per model (inside the workers), the
speed-up and the scaling efficiency = speed-up / workers, against the ceiling of linear
scaling measured in the same run (efficiency 1.0). Options: --days N (14), --epochs N,
--pretrain-epochs N, --finetune head|all (default: the settings'), --workers N (2),
--running-stack (the running stack's Ray head, not a private one).

It also projects the nightly retrain of the whole network (``--network-series``,
46,000 sensor × measure series) on ``--cpus`` CPUs (64): the pre-training reads at most
``pretrain_series`` series per measure whatever the network's size (its measured time,
scaled to that sample), then every series is fine-tuned at the measured seconds per
series, spread over the CPUs at the measured scaling efficiency.

``--copies`` (4) fits every archive series that many times under distinct keys: the
archive has 78 series, and a run's start (the Train controller, the worker group, each
worker importing TensorFlow; about half a minute here) is a fixed cost that a nightly
round of thousands of series does not notice, but that would dominate 78 short fits.
``--copies 1`` measures the archive's series alone.

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console

from benchmarks._common import emit, private_stack

START = date(2019, 3, 4)  # a Monday
COPY_ID_STRIDE = 10**9  # a copy's sensor ids: no real sensor id is this large


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pretrain-epochs", type=int, default=None)
    parser.add_argument("--finetune", choices=("head", "all"), default=None)
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--network-series", type=int, default=46_000)
    parser.add_argument("--cpus", type=int, default=64)
    parser.add_argument(
        "--running-stack", action="store_true", help="use the running stack's Ray head"
    )
    args = parser.parse_args()

    import ray

    from aircast.backfill import archive_aggregates
    from aircast.forecasting import Series, series_from_aggregates
    from training.trainer import cleanup, fit_config, train

    console = Console(stderr=True)
    end = START + timedelta(days=args.days - 1)
    from aircast.settings import load_settings

    stack = nullcontext(load_settings()) if args.running_stack else private_stack("ray")
    with stack as base:
        archive = base.data.archive_dir.resolve()
        with console.status(f"aggregates of {START} .. {end}"):
            aggs = list(archive_aggregates(archive, START, end))
        series = [
            Series(s.sensor_id + k * COPY_ID_STRIDE, s.measure, s.start, s.values)
            for k in range(args.copies)
            for s in series_from_aggregates(aggs)
        ]
        tasks = [(s, None) for s in series]
        console.print(f"{len(series)} series (sensors × measures) from {len(aggs)} aggregates")
        ray.init(address=base.ray.address, log_to_driver=False)
        runs = {}
        with tempfile.TemporaryDirectory(prefix="aircast-bench-train-") as tmp:
            train_settings = base.train.model_copy(update={"storage_path": Path(tmp)})
            settings = base.model_copy(update={"train": train_settings})
            overrides = {
                k: v
                for k, v in (
                    ("epochs", args.epochs),
                    ("pretrain_epochs", args.pretrain_epochs),
                    ("finetune", args.finetune),
                )
                if v is not None
            }
            cfg = fit_config(settings, **overrides)
            for workers in sorted({1, args.workers}):
                with console.status(f"fitting {len(tasks)} models on {workers} worker(s)"):
                    t0 = time.perf_counter()
                    run = train(settings, tasks, workers=workers, cfg=cfg)
                    wall = time.perf_counter() - t0
                per_model = [r["seconds"] for r in run.results.values()]
                runs[workers] = {
                    "wall_s": round(wall, 1),
                    "fit_s": round(run.seconds, 1),
                    "models": len(per_model),
                    "fitted": sum(1 for r in run.results.values() if r["has_model"]),
                    "per_model_s": round(statistics.fmean(per_model), 2),
                    "pretrain_s": round(run.pretrain_seconds, 1),
                    "epochs_mean": round(
                        statistics.fmean(r["epochs"] for r in run.results.values()), 1
                    ),
                }
                console.print(f"{workers} worker(s): {runs[workers]}")
                cleanup(run, settings)
        ray.shutdown()
    one, many = runs[1]["wall_s"], runs[args.workers]["wall_s"]
    speedup = one / many if many else 0.0
    efficiency = speedup / args.workers
    measures = {s.measure for s in series} or {""}
    per_measure = len(series) / len(measures)
    # The pre-training fits each measure's sample in parallel (one worker a measure).
    pretrain_s = float(runs[1]["pretrain_s"]) / len(measures)
    pretrain_at_scale = pretrain_s * max(1.0, cfg.pretrain_series / per_measure)
    per_series = float(runs[1]["per_model_s"])
    fine_tune_s = args.network_series * per_series / (args.cpus * max(efficiency, 1e-9))
    emit(
        {
            "benchmark": "train",
            "days": args.days,
            "epochs_max": cfg.epochs,
            "finetune": cfg.finetune,
            "series": len(series),
            "copies": args.copies,
            "runs": {str(k): v for k, v in runs.items()},
            "speedup": round(speedup, 2),
            "scaling_efficiency": round(efficiency, 2),
            "per_series_s": per_series,
            "projection": {
                "series": args.network_series,
                "cpus": args.cpus,
                "pretrain_s": round(pretrain_at_scale, 1),
                "fine_tune_s": round(fine_tune_s, 1),
                "wall_s": round(pretrain_at_scale + fine_tune_s, 1),
            },
            "ceiling": 1.0,
            "ratio": round(speedup / args.workers, 2),
        }
    )


if __name__ == "__main__":
    main()
