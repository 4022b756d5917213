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
    best_baseline,
    blend,
    choose_blend,
    inputs,
    interval_bounds,
    residual_quantiles,
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
    # Epochs of the per-measure pre-training (0: every network starts from scratch)
    # and the most series per measure it reads (bounds its cost at any network size).
    pretrain_epochs: int = 0
    pretrain_series: int = 200
    # What a per-series fine-tune from pre-trained weights fits: "head" keeps the
    # measure's GRU frozen and fits only the dense head on its features (computed once,
    # so a fine-tune costs one forward pass plus a tiny MLP fit); "all" fits every layer.
    finetune: str = "head"

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
            "pretrain_epochs": self.pretrain_epochs,
            "pretrain_series": self.pretrain_series,
            "finetune": self.finetune,
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
    z = keras.layers.Concatenate(name="features")([x, ctx])
    z = keras.layers.Dense(units, activation="relu", name="hidden")(z)
    out = keras.layers.Dense(horizons, name="delta")(z)
    return keras.Model([seq, ctx], out)


def forecast(
    model: Any, values: np.ndarray, start: int, origins: np.ndarray, cfg: FitConfig, scaler: Scaler
) -> np.ndarray:
    """(n, H) model forecasts in the series' units."""
    if origins.size == 0:
        return np.zeros((0, len(cfg.horizons)))
    x = inputs(values, start, origins, cfg.window, cfg.horizons, scaler)
    delta = infer(model, [x.sequence, x.context])
    return scaler.decode(x.last[:, None], delta.astype(np.float64))


def infer(model: Any, xs: list[np.ndarray], batch: int = 4096) -> np.ndarray:
    """``model``'s outputs for ``xs``, called directly a batch at a time: not through
    Keras' predict loop, whose tf.data pipeline runs threads of its own that compete
    with the other Train workers for the cores, and which traces itself anew for every
    freshly built model."""
    n = xs[0].shape[0]
    parts = []
    for i in range(0, n, batch):
        chunk = [x[i : i + batch] for x in xs]
        # A one-input model takes its array itself, not a list of one (Keras warns).
        parts.append(np.asarray(model(chunk if len(chunk) > 1 else chunk[0], training=False)))
    return np.concatenate(parts) if parts else np.zeros((0, *model.output.shape[1:]))


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
    served: Served

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
            "served": self.served.to_dict(),
        }


@dataclass(frozen=True)
class Served:
    """What the registry serves for a series, chosen on its validation window only.

    ``kind`` "rnn": the network damped towards persistence by ``blend[j]`` per horizon
    (0 = persistence at that horizon); it is served when the network strictly helps at
    some horizon. Otherwise the baseline with the lower validation MAE. ``intervals``:
    per horizon, the 10 % and 90 % quantiles of the served forecast's validation
    residuals in the model space (``log1p`` for PM); empty without a validation window.
    """

    kind: str
    blend: tuple[float, ...]
    intervals: tuple[tuple[float, float], ...]
    log: bool

    def forecast(
        self, values: np.ndarray, origins: np.ndarray, network: np.ndarray | None, cfg: FitConfig
    ) -> np.ndarray:
        if self.kind == "rnn" and network is not None:
            return blend(values[origins], network, self.blend, self.log)
        return baseline_matrix(self.kind, values, origins, cfg.horizons)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "blend": list(self.blend),
            "intervals": [list(q) for q in self.intervals],
            "log": self.log,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Served:
        return cls(
            kind=str(d["kind"]),
            blend=tuple(float(a) for a in d.get("blend", ())),
            intervals=tuple((float(q[0]), float(q[1])) for q in d.get("intervals", ())),
            log=bool(d.get("log", False)),
        )


def _choose(
    values: np.ndarray,
    origins: np.ndarray,
    network: np.ndarray | None,
    cfg: FitConfig,
    log: bool,
) -> Served:
    """The served forecaster and its interval, from the validation origins."""
    actual = targets(values, origins, cfg.horizons)
    if network is not None and origins.size:
        alphas = choose_blend(values[origins], network, actual, log)
        if any(a > 0 for a in alphas):
            chosen = Served("rnn", alphas, (), log)
            served = chosen.forecast(values, origins, network, cfg)
            quantiles = tuple(residual_quantiles(served, actual, log))
            return Served("rnn", alphas, quantiles, log)
    sums = ErrorSums(cfg.horizons)
    sums.add(actual, {k: baseline_matrix(k, values, origins, cfg.horizons) for k in BASELINES})
    kind = best_baseline(sums.metrics())
    served = baseline_matrix(kind, values, origins, cfg.horizons)
    quantiles = tuple(residual_quantiles(served, actual, log)) if origins.size else ()
    return Served(kind, (), quantiles, log)


def _network(
    model: Any, values: np.ndarray, start: int, origins: np.ndarray, cfg: FitConfig, s: Scaler
) -> np.ndarray | None:
    return None if model is None else forecast(model, values, start, origins, cfg, s)


def _score(
    values: np.ndarray,
    origins: np.ndarray,
    cfg: FitConfig,
    network: np.ndarray | None,
    served: Served,
) -> ErrorSums:
    """Scores of the baselines, the network (its forecasts ``network``; None without
    one) and the served forecast with its interval, at ``origins``."""
    sums = ErrorSums(cfg.horizons)
    actual = targets(values, origins, cfg.horizons)
    forecasts = {k: baseline_matrix(k, values, origins, cfg.horizons) for k in BASELINES}
    if network is not None:
        forecasts["model"] = network
    forecasts["served"] = served.forecast(values, origins, network, cfg)
    interval = None
    if served.intervals:
        interval = interval_bounds(forecasts["served"], served.intervals, served.log)
    sums.add(actual, forecasts, interval)
    return sums


def split_origins(
    series: Series, split: int, cfg: FitConfig
) -> tuple[Scaler, np.ndarray, np.ndarray]:
    """The series' scaler (from ``values[:split]``) and its fit and validation origins:
    usable origins whose every target is known before ``split``, in time order, the
    last :data:`VAL_FRACTION` of them for validation (never shuffled into the fit)."""
    values = series.values
    scaler = Scaler.fit(values[:split], log=series.measure in LOG_MEASURES)
    origins = usable_origins(values, cfg.window, 0, split - max(cfg.horizons))
    y = targets(values, origins, cfg.horizons)
    origins = origins[np.isfinite(y).all(axis=1)]
    cut = int(origins.size * (1 - VAL_FRACTION))
    return scaler, origins[:cut], origins[cut:]


def arrays(
    series: Series, origins: np.ndarray, cfg: FitConfig, scaler: Scaler
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sequence, context, target change) at ``origins``, in the series' own units of
    standard deviation: comparable across series, so one network can learn from all."""
    x = inputs(series.values, series.start, origins, cfg.window, cfg.horizons, scaler)
    y = scaler.delta(x.last[:, None], targets(series.values, origins, cfg.horizons))
    return x.sequence, x.context, y.astype(np.float32)


def pretrain(tasks: list[tuple[Series, int | None]], cfg: FitConfig, epochs: int) -> list[Any]:
    """One network fitted on the fit origins of every series (never their validation
    origins, so each series' validation stays held out); its weights start each
    per-series fine-tune."""
    import keras

    parts = []
    for series, split in tasks:
        scaler, fit_o, _ = split_origins(
            series, series.values.size if split is None else split, cfg
        )
        if fit_o.size:
            parts.append(arrays(series, fit_o, cfg, scaler))
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(cfg.window, len(cfg.horizons), cfg.units)
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss="mae")
    if parts:
        seq, ctx, y = (np.concatenate([p[i] for p in parts]) for i in range(3))
        model.fit([seq, ctx], y, epochs=epochs, batch_size=cfg.batch_size, verbose=0)
    return list(model.get_weights())


def _fit_head(
    model: Any,
    fit: tuple[np.ndarray, np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray, np.ndarray],
    cfg: FitConfig,
) -> int:
    """Fit only ``model``'s dense head, on the frozen GRU's features; the epochs run.

    The features (GRU state concatenated with the context) are computed once for the
    fit and validation origins, so each epoch is a small MLP fit: this is what makes a
    nightly retrain of every series cheap. The fitted head's weights are written back
    into ``model``, which stays one complete network to save and serve."""
    import keras

    features = keras.Model(model.inputs, model.get_layer("features").output)
    fx, vx = infer(features, [fit[0], fit[1]]), infer(features, [val[0], val[1]])
    hidden, out = model.get_layer("hidden"), model.get_layer("delta")
    x = keras.Input((fx.shape[1],))
    h = keras.layers.Dense(cfg.units, activation="relu")(x)
    head = keras.Model(x, keras.layers.Dense(len(cfg.horizons))(h))
    head.set_weights([*hidden.get_weights(), *out.get_weights()])
    head.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss="mae")
    # Keras' fit, minus its tf.data pipeline (see infer): shuffled batches, early
    # stopping on the validation MAE, the best epoch's weights restored.
    rng = np.random.default_rng(cfg.seed)
    best, best_weights, waited, epochs = math.inf, head.get_weights(), 0, 0
    for _ in range(cfg.epochs):
        epochs += 1
        order = rng.permutation(fx.shape[0])
        for i in range(0, order.size, cfg.batch_size):
            batch = order[i : i + cfg.batch_size]
            head.train_on_batch(fx[batch], fit[2][batch])
        loss = float(np.mean(np.abs(infer(head, [vx]) - val[2])))
        if loss < best:
            best, best_weights, waited = loss, head.get_weights(), 0
        else:
            waited += 1
            if waited >= cfg.patience:
                break
    hidden.set_weights(best_weights[:2])
    out.set_weights(best_weights[2:])
    return epochs


def fit_series(
    series: Series, split: int | None, cfg: FitConfig, init: list[Any] | None = None
) -> FitResult:
    """Fit on ``values[:split]`` (validation = its last 15 %), score the tail after it.

    ``init``: pre-trained weights (:func:`pretrain`) to fine-tune from: only the dense
    head (``cfg.finetune`` "head"), or every layer at a third of the learning rate
    ("all"); without them the network starts from scratch."""
    import keras

    began = time.perf_counter()
    values = series.values
    split = values.size if split is None else split
    scaler, fit_o, val_o = split_origins(series, split, cfg)
    model: Any = None
    epochs = 0
    if fit_o.size >= MIN_SAMPLES and val_o.size > 0:
        keras.utils.set_random_seed(cfg.seed)
        seq, ctx, yd = arrays(series, fit_o, cfg, scaler)
        vseq, vctx, yvd = arrays(series, val_o, cfg, scaler)
        model = build_model(cfg.window, len(cfg.horizons), cfg.units)
        if init is not None and cfg.finetune == "head":
            model.set_weights(init)
            epochs = _fit_head(model, (seq, ctx, yd), (vseq, vctx, yvd), cfg)
        else:
            rate = cfg.learning_rate
            if init is not None:
                model.set_weights(init)
                rate /= 3
            model.compile(optimizer=keras.optimizers.Adam(rate), loss="mae")
            stop = keras.callbacks.EarlyStopping(patience=cfg.patience, restore_best_weights=True)
            history = model.fit(
                [seq, ctx],
                yd,
                validation_data=([vseq, vctx], yvd),
                epochs=cfg.epochs,
                batch_size=cfg.batch_size,
                callbacks=[stop],
                verbose=0,
                shuffle=True,
            )
            epochs = len(history.history["loss"])
    network_val = _network(model, values, series.start, val_o, cfg, scaler)
    served = _choose(values, val_o, network_val, cfg, scaler.log)
    val = _score(values, val_o, cfg, network_val, served)
    test: ErrorSums | None = None
    if split < values.size:
        test_o = usable_origins(values, cfg.window, split - 1, values.size)
        network_test = _network(model, values, series.start, test_o, cfg, scaler)
        test = _score(values, test_o, cfg, network_test, served)
    seconds = time.perf_counter() - began
    log.info(
        "fitted key=%s samples=%d epochs=%d served=%s blend=%s seconds=%.1f",
        series.key,
        fit_o.size,
        epochs,
        served.kind,
        served.blend,
        seconds,
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
        served,
    )


def save(result: FitResult, directory: Path, cfg: FitConfig) -> None:
    """``model.keras`` (when fitted), ``scaler.json`` and ``result.json`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    if result.model is not None:
        result.model.save(directory / "model.keras")
    scaler = {
        **result.scaler.to_dict(),
        "window": cfg.window,
        "horizons": list(cfg.horizons),
        # The damping per horizon: training.predict serves what validation chose.
        "blend": list(result.served.blend) or [1.0] * len(cfg.horizons),
    }
    (directory / "scaler.json").write_text(json.dumps(scaler), encoding="utf-8")
    summary = result.summary()
    (directory / "result.json").write_text(json.dumps(summary, allow_nan=True), encoding="utf-8")


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
