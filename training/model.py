"""The network and the fit of one (sensor, measure) series.

Better than the original (one LSTM(12) per value type over all cities, 6 raw steps, a
90/10 shuffled split, no scaling): one small model per sensor and measure, inputs
normalised by the series' own training statistics, a 6-hour window with a gap mask and
time of day, the same-time-yesterday values as context, a direct multi-horizon output
(10 min, 1 h, 6 h at once, no error feedback through recursion) predicting the change
from the last value, MAE loss (robust to the archive's particulate spikes), early
stopping on a chronological validation tail, and scores against both baselines.

Network: GRU(units) over the window → concatenated with the context → Dense(units,
relu) → Dense(len(horizons)).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aircast.forecasting import (
    BASELINES,
    LOG_MEASURES,
    ErrorSums,
    Scaler,
    Series,
    baseline_matrix,
    inputs,
    targets,
    usable_origins,
)

log = logging.getLogger(__name__)

MIN_SAMPLES = 200  # fewer training windows than this: no model, baselines only
VAL_FRACTION = 0.15


@dataclass(frozen=True)
class FitConfig:
    window: int
    horizons: tuple[int, ...]
    epochs: int
    batch_size: int
    units: int = 32
    patience: int = 3
    learning_rate: float = 3e-3
    seed: int = 7

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "horizons": list(self.horizons),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "units": self.units,
            "patience": self.patience,
            "learning_rate": self.learning_rate,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FitConfig:
        return cls(**{**d, "horizons": tuple(d["horizons"])})


def configure_threads(threads: int) -> None:
    """One worker, ``threads`` cores: set before TensorFlow runs anything."""
    import tensorflow as tf  # type: ignore[import-untyped]

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass  # already initialised in this process: the first setting stays


def build_model(window: int, horizons: int, units: int) -> Any:
    import keras  # type: ignore[import-untyped]

    seq = keras.Input((window, 4), name="sequence")
    ctx = keras.Input((2 + 2 * horizons,), name="context")
    x = keras.layers.GRU(units, name="gru")(seq)
    z = keras.layers.Concatenate()([x, ctx])
    z = keras.layers.Dense(units, activation="relu")(z)
    out = keras.layers.Dense(horizons, name="delta")(z)
    return keras.Model([seq, ctx], out)


def forecast(
    model: Any, values: np.ndarray, start: int, origins: np.ndarray, cfg: FitConfig, scaler: Scaler
) -> np.ndarray:
    """(n, H) model forecasts in the series' units."""
    if origins.size == 0:
        return np.zeros((0, len(cfg.horizons)))
    x = inputs(values, start, origins, cfg.window, cfg.horizons, scaler)
    delta = np.asarray(model.predict([x.sequence, x.context], batch_size=4096, verbose=0))
    return scaler.decode(x.last[:, None], delta.astype(np.float64))


@dataclass
class FitResult:
    key: str
    sensor_id: int
    measure: str
    samples: int
    epochs: int
    seconds: float
    val: ErrorSums
    test: ErrorSums | None
    model: Any  # a keras.Model, or None when there was too little data
    scaler: Scaler

    def summary(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "sensor_id": self.sensor_id,
            "measure": self.measure,
            "samples": self.samples,
            "epochs": self.epochs,
            "seconds": self.seconds,
            "has_model": self.model is not None,
            "val": self.val.to_dict(),
            "test": None if self.test is None else self.test.to_dict(),
            "scaler": self.scaler.to_dict(),
        }


def _score(
    values: np.ndarray, start: int, origins: np.ndarray, cfg: FitConfig, scaler: Scaler, model: Any
) -> ErrorSums:
    sums = ErrorSums(cfg.horizons)
    actual = targets(values, origins, cfg.horizons)
    forecasts = {k: baseline_matrix(k, values, origins, cfg.horizons) for k in BASELINES}
    if model is not None:
        forecasts["model"] = forecast(model, values, start, origins, cfg, scaler)
    sums.add(actual, forecasts)
    return sums


def fit_series(series: Series, split: int | None, cfg: FitConfig) -> FitResult:
    """Fit on ``values[:split]`` (validation = its last 15 %), score the tail after it."""
    import keras

    began = time.perf_counter()
    values = series.values
    split = values.size if split is None else split
    scaler = Scaler.fit(values[:split], log=series.measure in LOG_MEASURES)
    horizon = max(cfg.horizons)
    origins = usable_origins(values, cfg.window, 0, split - horizon)
    y = targets(values, origins, cfg.horizons)
    origins = origins[np.isfinite(y).all(axis=1)]
    cut = int(origins.size * (1 - VAL_FRACTION))
    fit_o, val_o = origins[:cut], origins[cut:]
    model: Any = None
    epochs = 0
    if fit_o.size >= MIN_SAMPLES and val_o.size > 0:
        keras.utils.set_random_seed(cfg.seed)
        x = inputs(values, series.start, fit_o, cfg.window, cfg.horizons, scaler)
        xv = inputs(values, series.start, val_o, cfg.window, cfg.horizons, scaler)
        yd = scaler.delta(x.last[:, None], targets(values, fit_o, cfg.horizons)).astype(np.float32)
        yvd = scaler.delta(xv.last[:, None], targets(values, val_o, cfg.horizons)).astype(
            np.float32
        )
        model = build_model(cfg.window, len(cfg.horizons), cfg.units)
        model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss="mae")
        stop = keras.callbacks.EarlyStopping(patience=cfg.patience, restore_best_weights=True)
        history = model.fit(
            [x.sequence, x.context],
            yd,
            validation_data=([xv.sequence, xv.context], yvd),
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            callbacks=[stop],
            verbose=0,
            shuffle=True,
        )
        epochs = len(history.history["loss"])
    val = _score(values, series.start, val_o, cfg, scaler, model)
    test: ErrorSums | None = None
    if split < values.size:
        test_o = usable_origins(values, cfg.window, split - 1, values.size)
        test = _score(values, series.start, test_o, cfg, scaler, model)
    seconds = time.perf_counter() - began
    log.info(
        "fitted key=%s samples=%d epochs=%d seconds=%.1f", series.key, fit_o.size, epochs, seconds
    )
    return FitResult(
        series.key,
        series.sensor_id,
        series.measure,
        int(fit_o.size),
        epochs,
        seconds,
        val,
        test,
        model,
        scaler,
    )


def save(result: FitResult, directory: Path, cfg: FitConfig) -> None:
    """``model.keras`` (when fitted), ``scaler.json`` and ``result.json`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    if result.model is not None:
        result.model.save(directory / "model.keras")
    scaler = {**result.scaler.to_dict(), "window": cfg.window, "horizons": list(cfg.horizons)}
    (directory / "scaler.json").write_text(json.dumps(scaler), encoding="utf-8")
    summary = result.summary()
    (directory / "result.json").write_text(json.dumps(summary, allow_nan=True), encoding="utf-8")


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
