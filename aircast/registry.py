"""The model registry: versions per (sensor, measure) with their metrics, and a
latest-good pointer that Serve reads.

Layout (``settings.train.registry_dir``, a shared volume on Kubernetes)::

    <root>/<measure>/<sensor_id>/<version>/meta.json    # a ModelEntry
    <root>/<measure>/<sensor_id>/<version>/model.keras  # only for kind "rnn"

Pointers live in Redis so every Serve replica sees a promotion at once::

    <prefix>models:latest:<measure>:<sensor_id>   -> ModelEntry JSON

A model that does not beat persistence on its validation window is registered but not
promoted; the best baseline is promoted instead (kind ``persistence`` or
``seasonal_naive``, no file). This module never imports TensorFlow.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import redis

Kind = Literal["rnn", "persistence", "seasonal_naive"]
KINDS: tuple[str, ...] = ("rnn", "persistence", "seasonal_naive")


def horizon_label(steps: int, step_s: int = 600) -> str:
    """10-minute steps as a label: 1 → "10m", 6 → "1h", 36 → "6h"."""
    seconds = steps * step_s
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    return f"{seconds // 60}m"


@dataclass(frozen=True)
class ModelEntry:
    sensor_id: int
    measure: str
    version: str
    kind: Kind
    horizons: tuple[int, ...]  # in 10-minute steps
    window: int  # past 10-minute steps the model reads
    # Per horizon label: {"model_mae", "persistence_mae", "seasonal_naive_mae", "skill", ...}
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    skill: float = 0.0  # 1 - MAE_model / MAE_persistence, mean over horizons
    promoted: bool = False
    trained_at: int = 0  # epoch seconds
    path: str | None = None  # model directory relative to the registry root (rnn only)
    # Per horizon label: the (10 %, 90 %) quantiles of the served forecast's validation
    # residuals, added to the forecast in the model space (log1p when ``log_space``):
    # the served 80 % interval. Empty: no interval.
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    log_space: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelEntry:
        return cls(
            sensor_id=int(d["sensor_id"]),
            measure=str(d["measure"]),
            version=str(d["version"]),
            kind=d["kind"],
            horizons=tuple(int(h) for h in d["horizons"]),
            window=int(d["window"]),
            metrics={
                str(k): {str(a): float(b) for a, b in v.items()}
                for k, v in d.get("metrics", {}).items()
            },
            skill=float(d.get("skill", 0.0)),
            promoted=bool(d.get("promoted", False)),
            trained_at=int(d.get("trained_at", 0)),
            path=d.get("path"),
            intervals={
                str(k): (float(v[0]), float(v[1])) for k, v in d.get("intervals", {}).items()
            },
            log_space=bool(d.get("log_space", False)),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelEntry:
        return cls.from_dict(json.loads(text))


class Registry:
    def __init__(self, root: Path, client: redis.Redis[str], prefix: str) -> None:
        self.root = root
        self.redis = client
        self.prefix = prefix

    def _pointer(self, measure: str, sensor_id: int) -> str:
        return f"{self.prefix}models:latest:{measure}:{sensor_id}"

    def version_dir(self, measure: str, sensor_id: int, version: str) -> Path:
        return self.root / measure / str(sensor_id) / version

    def register(self, entry: ModelEntry) -> ModelEntry:
        """Write the entry's metadata; move the latest pointer if it is promoted."""
        directory = self.version_dir(entry.measure, entry.sensor_id, entry.version)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / "meta.json.tmp"
        tmp.write_text(entry.to_json(), encoding="utf-8")
        tmp.replace(directory / "meta.json")
        if entry.promoted:
            self.redis.set(self._pointer(entry.measure, entry.sensor_id), entry.to_json())
        return entry

    def latest(self, sensor_id: int, measure: str) -> ModelEntry | None:
        raw = self.redis.get(self._pointer(measure, sensor_id))
        return ModelEntry.from_json(raw) if raw else None

    def all_latest(self) -> list[ModelEntry]:
        pattern = f"{self.prefix}models:latest:*"
        keys = list(self.redis.scan_iter(match=pattern, count=1000))
        values = self.redis.mget(keys) if keys else []
        return [ModelEntry.from_json(v) for v in values if v]

    def versions(self, sensor_id: int, measure: str) -> list[ModelEntry]:
        base = self.root / measure / str(sensor_id)
        if not base.is_dir():
            return []
        entries = [
            ModelEntry.from_json((d / "meta.json").read_text(encoding="utf-8"))
            for d in sorted(base.iterdir())
            if (d / "meta.json").is_file()
        ]
        return sorted(entries, key=lambda e: (e.trained_at, e.version))

    def model_path(self, entry: ModelEntry) -> Path | None:
        return self.root / entry.path if entry.path else None
