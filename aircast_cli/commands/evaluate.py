"""`aircast evaluate`: models vs baselines on archive data, rolling origin.

Builds the 10-minute aggregates of ``--train-start .. --test-end`` from the archive in
memory (the backfill's own validation and aggregation, no InfluxDB), fits one model per
(sensor, measure) on the training span with Ray Train, and scores it on the test span
(every 10-minute origin of the held-out tail; the model is not refitted) against
persistence and seasonal-naive on the same origins. Scores are pooled over series
(MAE = total absolute error / origins), and averaged over measures (each measure's
skill weighs the same). ``served`` is what the registry would serve: per horizon, the
network damped towards persistence as its validation window chose, else the better
baseline; ``coverage`` is the share of test values inside the served 80 % interval
(residual quantiles from validation). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, date, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.table import Table

from aircast.archive import days
from aircast.backfill import archive_aggregates
from aircast.forecasting import ErrorSums, Series, series_from_aggregates
from aircast.records import Aggregate
from aircast.settings import Settings

log = logging.getLogger(__name__)
console = Console(stderr=True)  # stdout keeps the table and the JSON line

DEFAULT_MEASURES = "P1,P2,temperature,humidity"


def _epoch(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def _day_aggregates(source: str, day: date) -> list[Aggregate]:
    return list(archive_aggregates(source, day, day))


def load_aggregates(source: str, start: date, end: date, processes: int) -> list[Aggregate]:
    """Aggregates of every day, days read in parallel processes (CPU-bound parsing)."""
    span = days(start, end)
    with ProcessPoolExecutor(max_workers=max(1, processes)) as pool:
        chunks = pool.map(_day_aggregates, [source] * len(span), span)
        return [a for chunk in chunks for a in chunk]


def served_sums(result: dict[str, Any]) -> ErrorSums | None:
    """The test sums of a series, ``served`` included (what the registry serves: chosen
    per horizon on the validation window when the series was fitted)."""
    if result["test"] is None:
        return None
    return ErrorSums.from_dict(result["test"])


def _rounded(row: dict[str, float]) -> dict[str, float | None]:
    return {k: (round(v, 4) if math.isfinite(v) else None) for k, v in row.items()}


def _mean_over_measures(
    per_measure: dict[str, dict[str, dict[str, float]]], labels: Sequence[str]
) -> dict[str, dict[str, float | None]]:
    """Per horizon: the skills averaged over measures (each measure weighs the same,
    whatever its units or number of sensors), and the lowest served skill."""
    out: dict[str, dict[str, float | None]] = {}
    for label in labels:
        row: dict[str, float] = {}
        for name in ("skill", "served_skill", "coverage"):
            vals = [m[label][name] for m in per_measure.values() if name in m.get(label, {})]
            finite = [v for v in vals if math.isfinite(v)]
            row[name] = sum(finite) / len(finite) if finite else math.nan
        served = [m[label].get("served_skill", math.nan) for m in per_measure.values()]
        row["min_served_skill"] = min((v for v in served if math.isfinite(v)), default=math.nan)
        out[label] = _rounded(row)
    return out


def summarise(results: dict[str, dict[str, Any]], horizons: Sequence[int]) -> dict[str, Any]:
    overall = ErrorSums(tuple(horizons))
    per_measure: dict[str, ErrorSums] = {}
    val_per_measure: dict[str, ErrorSums] = {}
    for result in results.values():
        sums = served_sums(result)
        if sums is None or not result["has_model"]:
            continue  # too little data to fit: no model to compare
        overall.merge(sums)
        per_measure.setdefault(result["measure"], ErrorSums(tuple(horizons))).merge(sums)
        val = ErrorSums.from_dict(result["val"])
        val_per_measure.setdefault(result["measure"], ErrorSums(tuple(horizons))).merge(val)
    measure_metrics = {m: s.metrics() for m, s in sorted(per_measure.items())}
    val_metrics = {m: s.metrics() for m, s in sorted(val_per_measure.items())}
    labels = list(overall.metrics())
    return {
        "horizons": {k: _rounded(v) for k, v in overall.metrics().items()},
        "mean_over_measures": _mean_over_measures(measure_metrics, labels),
        "per_measure": {
            m: {k: _rounded(v) for k, v in rows.items()} for m, rows in measure_metrics.items()
        },
        # The same figures on the validation windows the choices were made on.
        "validation_mean_over_measures": _mean_over_measures(val_metrics, labels),
    }


def _table(summary: dict[str, Any]) -> Table:
    table = Table(
        title="rolling-origin test: MAE per horizon (skill = 1 − MAE_model / MAE_persistence)"
    )
    for col in (
        "measure",
        "horizon",
        "origins",
        "model",
        "persistence",
        "seasonal naive",
        "served",
        "skill",
        "served skill",
        "80% coverage",
    ):
        table.add_column(col, justify="right" if col not in ("measure",) else "left")

    def fmt(v: Any, digits: int = 3) -> str:
        return "–" if v is None else f"{v:.{digits}f}"

    groups = [*summary["per_measure"].items(), ("all", summary["horizons"])]
    for measure, per_h in groups:
        for label, row in per_h.items():
            table.add_row(
                measure,
                label,
                str(int(row.get("n") or 0)),
                fmt(row.get("model_mae")),
                fmt(row.get("persistence_mae")),
                fmt(row.get("seasonal_naive_mae")),
                fmt(row.get("served_mae")),
                fmt(row.get("skill"), 3),
                fmt(row.get("served_skill"), 3),
                fmt(row.get("coverage"), 3),
            )
    for label, row in summary["mean_over_measures"].items():
        table.add_row(
            "mean of measures",
            label,
            "",
            "",
            "",
            "",
            "",
            fmt(row.get("skill"), 3),
            fmt(row.get("served_skill"), 3),
            fmt(row.get("coverage"), 3),
        )
    return table


def _connect_ray(settings: Settings, cpus: int) -> None:
    from aircast.localhost import ray_environment

    for name, value in ray_environment().items():
        os.environ.setdefault(name, value)  # before Ray is imported: stay on 127.0.0.1
    import ray

    try:
        ray.init(address=settings.ray.address or "auto", namespace=settings.ray.namespace)
    except ConnectionError:
        log.info("no Ray cluster at %s; starting a local one", settings.ray.address)
        ray.init(num_cpus=cpus, include_dashboard=False)


def cmd_evaluate(settings: Settings, args: argparse.Namespace) -> int:
    began = time.perf_counter()
    measures = [m.strip() for m in args.measures.split(",") if m.strip()]
    test_start = args.train_end + timedelta(days=1)
    if not args.train_start <= args.train_end < args.test_end:
        console.print("[red]need --train-start <= --train-end < --test-end[/red]")
        return 2
    workers = args.workers or settings.train.workers
    with console.status("reading the archive and building 10-minute aggregates..."):
        aggs = load_aggregates(
            str(args.archive), args.train_start, args.test_end, os.cpu_count() or 1
        )
    end = _epoch(args.test_end + timedelta(days=1))
    split_at = _epoch(test_start)
    series: list[Series] = series_from_aggregates(aggs, measures, end=end)
    tasks = [(s, s.index_of(split_at)) for s in series if 0 < s.index_of(split_at) < s.values.size]
    console.print(
        f"{len(aggs)} aggregates, {len(series)} series, {len(tasks)} with train and test data"
    )
    from training.trainer import cleanup, fit_config, train

    overrides = {
        k: v
        for k, v in (
            ("epochs", args.epochs),
            ("units", args.units),
            ("batch_size", args.batch_size),
            ("pretrain_epochs", args.pretrain_epochs),
            ("finetune", args.finetune),
        )
        if v is not None
    }
    cfg = fit_config(settings, **overrides)
    _connect_ray(settings, workers * settings.train.threads_per_worker + 1)
    import ray

    run = train(settings, tasks, workers=workers, cfg=cfg)
    summary = summarise(run.results, cfg.horizons)
    cleanup(run, settings)
    ray.shutdown()
    fitted = sum(1 for r in run.results.values() if r["has_model"])
    Console(width=160).print(_table(summary))  # wide enough that no figure is cut
    summary.update(
        {
            "models": fitted,
            "series": len(tasks),
            "workers": workers,
            "train_seconds": round(run.seconds, 1),
            "pretrain_seconds": round(run.pretrain_seconds, 1),
            "per_series_seconds": round(
                sum(r["seconds"] for r in run.results.values()) / max(1, len(run.results)), 2
            ),
            "seconds": round(time.perf_counter() - began, 1),
        }
    )
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("evaluate", help="score models against baselines on archive data")
    p.add_argument("--archive", required=True, help="archive folder or http(s) base URL")
    p.add_argument("--train-start", type=date.fromisoformat, required=True)
    p.add_argument("--train-end", type=date.fromisoformat, required=True)
    p.add_argument("--test-end", type=date.fromisoformat, required=True)
    p.add_argument("--measures", default=DEFAULT_MEASURES, help="comma-separated measures")
    p.add_argument("--workers", type=int, default=None, help="Ray Train workers")
    p.add_argument("--epochs", type=int, default=None, help="maximum epochs (early stopping)")
    p.add_argument("--units", type=int, default=None, help="GRU width")
    p.add_argument("--batch-size", type=int, default=None, help="training batch size")
    p.add_argument(
        "--pretrain-epochs", type=int, default=None, help="per-measure pre-training (0: off)"
    )
    p.add_argument(
        "--finetune",
        choices=("head", "all"),
        default=None,
        help="what a per-sensor fine-tune fits: the dense head on the frozen GRU, or all",
    )
    p.set_defaults(func=cmd_evaluate)
