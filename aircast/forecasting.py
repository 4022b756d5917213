"""Forecasting, the numpy part: series on a regular 10-minute grid, model inputs,
baselines, rolling-origin scores. No TensorFlow here (training/ holds the network), so
Serve and the CLI can use baselines and scores without it.

Series. A sensor's 10-minute aggregates are put on a regular grid from its first to its
last window (:func:`grid`): a missing window is NaN (sensors drop out, come and go), two
aggregates of the same window (a re-delivered or re-computed one) are averaged, never
counted twice. Nothing assumes a sensor reports every window.

Inputs at origin ``t`` (the index of the last known value; horizon ``h`` forecasts index
``t + h``), all in units of the series' training standard deviation:

* a sequence of the last ``window`` steps: value relative to the last one (gaps filled
  with the previous value; clipped at ±10 standard deviations, the archive has spikes),
  observed mask, sin/cos of time of day;
* context: sin/cos of the origin's time of day and, per horizon, the value of the same
  time yesterday (``t + h - 144``) relative to the last value, with its mask.

Targets are the change from the last value, ``(y[t+h] - y[t]) / std``: the network
learns a correction to persistence, which is the baseline it has to beat.

An origin is usable when its last value is known and at most half its window is gaps;
in evaluation also when the target and the same-time-yesterday value are known, so the
model and both baselines are scored on exactly the same origins.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from aircast.records import AGGREGATE_WINDOW_S, Aggregate
from aircast.registry import horizon_label

STEP_S = AGGREGATE_WINDOW_S  # one grid step: 10 minutes
DAY_STEPS = 86_400 // STEP_S  # 144: same time yesterday
MAX_GAP_FRACTION = 0.5  # an input window may be at most half gaps
LOG_MEASURES = frozenset({"P1", "P2"})  # modelled in log space (see Scaler)
CLIP = 10.0  # inputs are clipped at this many standard deviations
BASELINES: tuple[str, ...] = ("persistence", "seasonal_naive")

Array = NDArray[np.float64]


@dataclass(frozen=True)
class Series:
    """One sensor's measure on the regular 10-minute grid (NaN = no aggregate)."""

    sensor_id: int
    measure: str
    start: int  # epoch seconds of values[0]'s window start
    values: Array

    @property
    def key(self) -> str:
        return f"{self.measure}:{self.sensor_id}"

    def index_of(self, epoch: int) -> int:
        return (epoch - self.start) // STEP_S

    def to_dict(self) -> dict[str, Any]:
        return {
            "sensor_id": self.sensor_id,
            "measure": self.measure,
            "start": self.start,
            "values": self.values,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Series:
        return cls(int(d["sensor_id"]), str(d["measure"]), int(d["start"]), np.asarray(d["values"]))


def grid(
    points: Iterable[tuple[int, float]], start: int | None = None, end: int | None = None
) -> tuple[int, Array]:
    """(window start, value) points → (grid start, values); duplicates averaged.

    ``start``/``end`` (epoch, end exclusive) fix the span; by default it runs from the
    first to the last point. Times are floored to the 10-minute grid.
    """
    sums: dict[int, float] = defaultdict(float)
    counts: dict[int, int] = defaultdict(int)
    for epoch, value in points:
        if not math.isfinite(value):
            continue
        slot = int(epoch) - int(epoch) % STEP_S
        sums[slot] += float(value)
        counts[slot] += 1
    if start is None:
        if not sums:
            return 0, np.zeros(0)
        start = min(sums)
    start -= start % STEP_S
    stop = end if end is not None else (max(sums) + STEP_S if sums else start)
    n = max(0, -(-(stop - start) // STEP_S))  # windows starting before ``stop``
    values = np.full(n, np.nan)
    for slot, total in sums.items():
        i = (slot - start) // STEP_S
        if 0 <= i < n:
            values[i] = total / counts[slot]
    return start, values


def series_from_aggregates(
    aggregates: Iterable[Aggregate],
    measures: Sequence[str] | None = None,
    start: int | None = None,
    end: int | None = None,
) -> list[Series]:
    """Aggregates → one grid series per (sensor, measure), sorted by key."""
    points: dict[tuple[int, str], list[tuple[int, float]]] = defaultdict(list)
    for a in aggregates:
        if measures is None or a.measure in measures:
            points[(a.sensor_id, a.measure)].append((a.window_start, a.mean))
    out: list[Series] = []
    for (sensor_id, measure), pts in sorted(points.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        first, values = grid(pts, start, end)
        out.append(Series(sensor_id, measure, first, values))
    return out


# -- features -----------------------------------------------------------------------


@dataclass(frozen=True)
class Scaler:
    """Normalisation of one series (from its training span).

    ``log``: the series is modelled as ``log1p`` (particulate matter: non-negative,
    skewed, with multiplicative episodes; a month at other levels than the training
    month keeps its shape in log space).
    """

    mean: float
    std: float
    log: bool = False

    @classmethod
    def fit(cls, values: Array, log: bool = False) -> Scaler:
        t = cls(0.0, 1.0, log).forward(values)
        finite = t[np.isfinite(t)]
        if finite.size == 0:
            return cls(0.0, 1.0, log)
        std = float(np.std(finite))
        # A stuck sensor has no spread; scale 1 keeps the inputs finite.
        return cls(float(np.mean(finite)), std if std > 1e-6 else 1.0, log)

    def forward(self, values: Array) -> Array:
        return np.log1p(np.maximum(values, 0.0)) if self.log else values

    def encode(self, values: Array) -> Array:
        return (self.forward(values) - self.mean) / self.std

    def delta(self, last: Array, future: Array) -> Array:
        """Training target: the change from the last value, in standard deviations."""
        return (self.forward(future) - self.forward(last)) / self.std

    def decode(self, last: Array, delta: Array) -> Array:
        """Forecast in the series' units from the last value and a predicted change."""
        z = self.forward(last) + delta * self.std
        return np.expm1(z) if self.log else z

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "log": self.log}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scaler:
        return cls(float(d["mean"]), float(d["std"]), bool(d.get("log", False)))


def ffill(values: Array) -> Array:
    """NaNs replaced by the previous finite value (leading NaNs by the first one)."""
    mask = np.isfinite(values)
    if not mask.any():
        return np.zeros_like(values)
    idx = np.where(mask, np.arange(values.size), 0)
    np.maximum.accumulate(idx, out=idx)
    out = values[idx]
    first = int(np.argmax(mask))
    out[:first] = values[first]
    return out


def time_of_day(epochs: NDArray[np.int64] | Array) -> tuple[Array, Array]:
    angle = 2 * np.pi * (np.asarray(epochs, dtype=np.float64) % 86_400) / 86_400
    return np.sin(angle), np.cos(angle)


@dataclass(frozen=True)
class Inputs:
    """Model inputs for a set of origins."""

    origins: NDArray[np.int64]  # index of the last known value
    sequence: NDArray[np.float32]  # (n, window, 4): value, mask, sin, cos
    context: NDArray[np.float32]  # (n, 2 + 2 * len(horizons))
    last: Array  # y[t] (raw units), the persistence forecast


def inputs(
    values: Array,
    start: int,
    origins: NDArray[np.int64],
    window: int,
    horizons: Sequence[int],
    scaler: Scaler,
) -> Inputs:
    """Inputs at ``origins`` of a grid series (``values[origins]`` must be finite)."""
    pad = window + DAY_STEPS
    padded = np.concatenate([np.full(pad, np.nan), values, np.full(max(horizons), np.nan)])
    norm = scaler.encode(padded)
    observed = np.isfinite(norm)
    filled = ffill(norm)
    times = start + (np.arange(padded.size) - pad) * STEP_S
    sin, cos = time_of_day(times)
    stacked = np.stack([filled, observed.astype(np.float64), sin, cos], axis=-1)
    views = np.lib.stride_tricks.sliding_window_view(stacked, window, axis=0)  # (m, 4, window)
    seq = views[origins + pad - window + 1].transpose(0, 2, 1).copy()
    last_norm = norm[origins + pad]
    # Relative to the last value: the network sees shapes, not levels, so a month with
    # other levels than the training month does not pull its forecasts back.
    seq[:, :, 0] = np.clip(seq[:, :, 0] - last_norm[:, None], -CLIP, CLIP)
    ctx = [sin[origins + pad], cos[origins + pad]]
    for h in horizons:
        lag = norm[origins + pad + h - DAY_STEPS]
        known = np.isfinite(lag)
        ctx.append(np.where(known, np.clip(lag - last_norm, -CLIP, CLIP), 0.0))
        ctx.append(known.astype(np.float64))
    return Inputs(
        origins=origins,
        sequence=seq.astype(np.float32),
        context=np.stack(ctx, axis=-1).astype(np.float32),
        last=values[origins],
    )


def usable_origins(
    values: Array, window: int, lo: int = 0, hi: int | None = None
) -> NDArray[np.int64]:
    """Origins in ``[lo, hi)`` whose last value is known and window at most half gaps."""
    hi = values.size if hi is None else min(hi, values.size)
    known = np.isfinite(values).astype(np.int64)
    csum = np.concatenate([[0], np.cumsum(known)])
    idx = np.arange(max(lo, 0), max(hi, 0))
    begin = np.maximum(idx - window + 1, 0)
    present = csum[idx + 1] - csum[begin]
    ok = (known[idx] == 1) & (present >= window * (1 - MAX_GAP_FRACTION))
    result: NDArray[np.int64] = idx[ok].astype(np.int64)
    return result


def targets(values: Array, origins: NDArray[np.int64], horizons: Sequence[int]) -> Array:
    """(n, H) future values at ``origins + h`` (NaN beyond the end or in a gap)."""
    out = np.full((origins.size, len(horizons)), np.nan)
    for j, h in enumerate(horizons):
        idx = origins + h
        inside = idx < values.size
        out[inside, j] = values[idx[inside]]
    return out


# -- baselines ----------------------------------------------------------------------


def baseline_forecast(
    kind: str, history: Array | Sequence[float], horizons: Sequence[int]
) -> dict[int, float]:
    """A baseline from the last values (oldest first, NaN for gaps): ``{h: value}``.

    persistence: the last known value. seasonal_naive: the value of the same time
    yesterday (``history[-1 - (144 - h)]``), falling back to persistence where that is a
    gap or the history is shorter than a day. A history with no value gives NaN.
    """
    hist = np.asarray(history, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(hist))
    last = float(hist[finite[-1]]) if finite.size else math.nan
    if kind == "persistence":
        return {h: last for h in horizons}
    if kind != "seasonal_naive":
        raise ValueError(f"unknown baseline {kind!r}; known: {', '.join(BASELINES)}")
    out: dict[int, float] = {}
    for h in horizons:
        back = DAY_STEPS - h  # steps before the last value
        i = hist.size - 1 - back
        out[h] = float(hist[i]) if 0 <= i < hist.size and math.isfinite(hist[i]) else last
    return out


def baseline_matrix(
    kind: str, values: Array, origins: NDArray[np.int64], horizons: Sequence[int]
) -> Array:
    """(n, H) baseline forecasts at ``origins`` (NaN where the baseline has no value)."""
    out = np.full((origins.size, len(horizons)), np.nan)
    for j, h in enumerate(horizons):
        if kind == "persistence":
            out[:, j] = values[origins]
        elif kind == "seasonal_naive":
            idx = origins + h - DAY_STEPS
            ok = idx >= 0
            out[ok, j] = values[idx[ok]]
        else:
            raise ValueError(f"unknown baseline {kind!r}")
    return out


# -- scores -------------------------------------------------------------------------


@dataclass
class ErrorSums:
    """Pooled error sums per forecaster and horizon (adds up across series)."""

    horizons: tuple[int, ...]
    n: dict[int, int] = field(default_factory=dict)
    abs: dict[str, dict[int, float]] = field(default_factory=dict)
    sq: dict[str, dict[int, float]] = field(default_factory=dict)
    # Origins whose actual value fell inside the served 10 %-90 % interval.
    covered: dict[int, int] = field(default_factory=dict)

    def add(
        self,
        actual: Array,
        forecasts: dict[str, Array],
        interval: tuple[Array, Array] | None = None,
    ) -> None:
        """Score on the origins where the actual value and every forecast exist."""
        ok = np.isfinite(actual)
        for f in forecasts.values():
            ok &= np.isfinite(f)
        for j, h in enumerate(self.horizons):
            col = ok[:, j]
            self.n[h] = self.n.get(h, 0) + int(col.sum())
            if interval is not None:
                lo, hi = interval[0][col, j], interval[1][col, j]
                inside = (actual[col, j] >= lo) & (actual[col, j] <= hi)
                self.covered[h] = self.covered.get(h, 0) + int(inside.sum())
            for name, f in forecasts.items():
                err = f[col, j] - actual[col, j]
                self.abs.setdefault(name, {})[h] = self.abs.get(name, {}).get(h, 0.0) + float(
                    np.abs(err).sum()
                )
                self.sq.setdefault(name, {})[h] = self.sq.get(name, {}).get(h, 0.0) + float(
                    (err**2).sum()
                )

    def merge(self, other: ErrorSums) -> None:
        for h, n in other.n.items():
            self.n[h] = self.n.get(h, 0) + n
        for h, c in other.covered.items():
            self.covered[h] = self.covered.get(h, 0) + c
        for table, theirs in ((self.abs, other.abs), (self.sq, other.sq)):
            for name, per_h in theirs.items():
                mine = table.setdefault(name, {})
                for h, v in per_h.items():
                    mine[h] = mine.get(h, 0.0) + v

    def metrics(self) -> dict[str, dict[str, float]]:
        """Per horizon label: ``<name>_mae``, ``<name>_rmse``, ``n`` and ``skill``."""
        out: dict[str, dict[str, float]] = {}
        for h in self.horizons:
            n = self.n.get(h, 0)
            row: dict[str, float] = {"n": float(n)}
            for name in self.abs:
                row[f"{name}_mae"] = self.abs[name][h] / n if n else math.nan
                row[f"{name}_rmse"] = math.sqrt(self.sq[name][h] / n) if n else math.nan
            if "model_mae" in row and "persistence_mae" in row:
                row["skill"] = skill(row["model_mae"], row["persistence_mae"])
            if "served_mae" in row and "persistence_mae" in row:
                row["served_skill"] = skill(row["served_mae"], row["persistence_mae"])
            if h in self.covered:
                row["coverage"] = self.covered[h] / n if n else math.nan
            out[horizon_label(h)] = row
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "horizons": list(self.horizons),
            "n": {str(h): v for h, v in self.n.items()},
            "abs": {k: {str(h): v for h, v in d.items()} for k, d in self.abs.items()},
            "sq": {k: {str(h): v for h, v in d.items()} for k, d in self.sq.items()},
            "covered": {str(h): v for h, v in self.covered.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ErrorSums:
        return cls(
            horizons=tuple(int(h) for h in d["horizons"]),
            n={int(h): int(v) for h, v in d["n"].items()},
            abs={k: {int(h): float(v) for h, v in x.items()} for k, x in d["abs"].items()},
            sq={k: {int(h): float(v) for h, v in x.items()} for k, x in d["sq"].items()},
            covered={int(h): int(v) for h, v in d.get("covered", {}).items()},
        )


def skill(model_mae: float, persistence_mae: float) -> float:
    """1 − MAE_model / MAE_persistence (0 when persistence is exact and so is the model)."""
    if not math.isfinite(model_mae) or not math.isfinite(persistence_mae):
        return math.nan
    if persistence_mae == 0:
        return 0.0 if model_mae == 0 else -math.inf
    return 1.0 - model_mae / persistence_mae


def score_baselines(
    values: Array, origins: NDArray[np.int64], horizons: Sequence[int]
) -> ErrorSums:
    """Persistence and seasonal-naive scored at ``origins`` (rolling origin, no model)."""
    sums = ErrorSums(tuple(horizons))
    sums.add(
        targets(values, origins, horizons),
        {k: baseline_matrix(k, values, origins, horizons) for k in BASELINES},
    )
    return sums


def best_baseline(metrics: dict[str, dict[str, float]]) -> str:
    """The baseline with the lower MAE averaged over horizons."""

    def mean_mae(name: str) -> float:
        maes = [row.get(f"{name}_mae", math.nan) for row in metrics.values()]
        finite = [m for m in maes if math.isfinite(m)]
        return sum(finite) / len(finite) if finite else math.inf

    return min(BASELINES, key=mean_mae)


def mean_skill(metrics: dict[str, dict[str, float]]) -> float:
    skills = [row["skill"] for row in metrics.values() if math.isfinite(row.get("skill", math.nan))]
    return sum(skills) / len(skills) if skills else math.nan


# -- served forecast: damping and intervals ------------------------------------------

# Damping factors tried per horizon on validation: the served forecast is
# ``last + alpha * (network - last)`` in the model space. 0 is persistence itself, so
# the chosen blend never does worse than persistence on the validation window.
BLEND_GRID: tuple[float, ...] = tuple(i / 10 for i in range(11))
INTERVAL_QUANTILES = (0.1, 0.9)  # the served interval: 10 %-90 %, nominal coverage 80 %


def model_space(values: Array, log: bool) -> Array:
    """The space forecasts are blended and intervals built in (``log1p`` for PM)."""
    return np.log1p(np.maximum(values, 0.0)) if log else values


def from_model_space(z: Array, log: bool) -> Array:
    return np.expm1(z) if log else z


def blend(last: Array, network: Array, alphas: Sequence[float], log: bool) -> Array:
    """(n, H) damped forecasts: ``last`` pulled towards the network by ``alphas[j]``."""
    z_last = model_space(np.asarray(last, dtype=np.float64).reshape(-1, 1), log)
    z_net = model_space(network, log)
    a = np.asarray(alphas, dtype=np.float64)[None, :]
    return from_model_space(z_last + a * (z_net - z_last), log)


def _mae(forecast: Array, actual: Array) -> float:
    ok = np.isfinite(forecast) & np.isfinite(actual)
    return float(np.abs(forecast[ok] - actual[ok]).mean()) if ok.any() else math.inf


def choose_blend(last: Array, network: Array, actual: Array, log: bool) -> tuple[float, ...]:
    """Per horizon, the damping factor of :data:`BLEND_GRID` with the lowest validation
    MAE (ties go to the smaller factor: persistence unless the network strictly helps)."""
    out: list[float] = []
    for j in range(actual.shape[1]):
        best, best_mae = 0.0, math.inf
        for alpha in BLEND_GRID:
            f = blend(last, network[:, j : j + 1], (alpha,), log)[:, 0]
            mae = _mae(f, actual[:, j])
            if mae < best_mae - 1e-12:
                best, best_mae = alpha, mae
        out.append(best)
    return tuple(out)


def residual_quantiles(forecast: Array, actual: Array, log: bool) -> list[tuple[float, float]]:
    """Per horizon, the 10 % and 90 % quantiles of ``actual - forecast`` in the model
    space (a multiplicative band for PM); (0, 0) where nothing was observed."""
    res = model_space(actual, log) - model_space(forecast, log)
    out: list[tuple[float, float]] = []
    for j in range(res.shape[1]):
        col = res[:, j][np.isfinite(res[:, j])]
        if col.size == 0:
            out.append((0.0, 0.0))
            continue
        lo, hi = np.quantile(col, INTERVAL_QUANTILES)
        out.append((float(min(lo, 0.0)), float(max(hi, 0.0))))
    return out


def interval_bounds(
    forecast: Array, quantiles: Sequence[tuple[float, float]], log: bool
) -> tuple[Array, Array]:
    """(low, high) around (n, H) forecasts from per-horizon residual quantiles."""
    z = model_space(np.asarray(forecast, dtype=np.float64), log)
    lo = np.asarray([q[0] for q in quantiles], dtype=np.float64)[None, :]
    hi = np.asarray([q[1] for q in quantiles], dtype=np.float64)[None, :]
    return from_model_space(z + lo, log), from_model_space(z + hi, log)


def interval_of(value: float, quantiles: tuple[float, float], log: bool) -> tuple[float, float]:
    """One forecast's (low, high) (what Serve adds to each point)."""
    low, high = interval_bounds(np.array([[value]]), [quantiles], log)
    return float(low[0, 0]), float(high[0, 0])
