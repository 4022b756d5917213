"""Names of the pipeline's metrics, defined once.

Stages export them through Ray's metrics (``ray.util.metrics``), which Ray's Prometheus
endpoint publishes with the prefix ``ray_``; Grafana dashboards and alerts use the
published names (:func:`published`). This module only names them: it never imports Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    kind: Literal["counter", "gauge", "histogram"]
    description: str
    tags: tuple[str, ...] = ()


INGEST_RECORDS = Metric(
    "aircast_ingest_records_total",
    "counter",
    "Feed records taken in by the scrapers, by outcome (produced, resighted: already "
    "produced from an earlier snapshot; duplicate, rejected: dead-lettered; "
    "rejected_again: already dead-lettered from an earlier snapshot).",
    ("outcome",),
)
INGEST_SNAPSHOTS = Metric(
    "aircast_ingest_snapshots_total", "counter", "Snapshots fetched, by source.", ("source",)
)
DEAD_LETTERS = Metric(
    "aircast_dead_letters_total",
    "counter",
    "Records or values sent to the dead-letter topic, by stage and reason.",
    ("stage", "reason"),
)
COLLECT_POINTS = Metric(
    "aircast_collect_points_total",
    "counter",
    "Points acknowledged by InfluxDB, by database.",
    ("database",),
)
COLLECT_LAG = Metric(
    "aircast_collect_lag_messages",
    "gauge",
    "Messages behind the end of the topic, by topic.",
    ("topic",),
)
COLLECT_BATCH_SECONDS = Metric(
    "aircast_collect_batch_seconds", "histogram", "Seconds to write one batch.", ("database",)
)
FORECASTS = Metric("aircast_forecasts_total", "counter", "Forecasts served, by kind.", ("kind",))

ALL: tuple[Metric, ...] = (
    INGEST_RECORDS,
    INGEST_SNAPSHOTS,
    DEAD_LETTERS,
    COLLECT_POINTS,
    COLLECT_LAG,
    COLLECT_BATCH_SECONDS,
    FORECASTS,
)


def published(metric: Metric) -> str:
    """The name Prometheus scrapes from Ray's metrics endpoint."""
    return f"ray_{metric.name}"
