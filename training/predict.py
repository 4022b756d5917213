"""The inference contract Serve codes against.

* :func:`load_model` — a registered model directory (``Registry.model_path(entry)``) or
  its ``model.keras`` file → an opaque loaded model (the network and its scaler). Load it
  once per replica and keep it.
* :func:`predict` — ``history`` is the last ``entry.window`` 10-minute means, oldest
  first, NaN for gaps; ``issued_at`` is the window start (epoch s) of the last history
  value (any time inside that window is fine: it is floored to 10 minutes). Returns
  ``{horizon_steps: value}`` for ``entry.horizons``; horizon ``h`` is the mean of the
  window ``h`` steps after the last one. A last value that is a gap is taken as the
  previous known one. A history with no value at all gives NaN. The value is the
  served one: the network damped towards persistence as validation chose per horizon.

Baselines (kind ``persistence``/``seasonal_naive``) need no file:
:func:`aircast.forecasting.baseline_forecast`; :func:`predict` dispatches to it when
``entry.kind`` is a baseline, so Serve may call it for any entry (``model`` = None).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aircast.forecasting import STEP_S, Scaler, baseline_forecast, blend, ffill, inputs
from aircast.registry import ModelEntry

MODEL_FILE = "model.keras"
SCALER_FILE = "scaler.json"


@dataclass(frozen=True)
class LoadedModel:
    network: Any  # keras.Model
    scaler: Scaler
    window: int  # steps the network's sequence input reads
    horizons: tuple[int, ...]
    # Per horizon, how far the forecast moves from persistence towards the network
    # (chosen on validation; 1.0 for models saved before damping existed).
    blend: tuple[float, ...]


def load_model(path: Path) -> Any:
    directory = path.parent if path.name == MODEL_FILE else path
    import keras  # type: ignore[import-untyped]

    meta = json.loads((directory / SCALER_FILE).read_text(encoding="utf-8"))
    network = keras.models.load_model(directory / MODEL_FILE, compile=False)
    return LoadedModel(
        network=network,
        scaler=Scaler.from_dict(meta),
        window=int(meta["window"]),
        horizons=tuple(int(h) for h in meta["horizons"]),
        blend=tuple(float(a) for a in meta.get("blend", [1.0] * len(meta["horizons"]))),
    )


def predict(model: Any, entry: ModelEntry, history: np.ndarray, issued_at: int) -> dict[int, float]:
    if entry.kind != "rnn":
        return baseline_forecast(entry.kind, history, entry.horizons)
    if not isinstance(model, LoadedModel):
        raise TypeError(f"predict needs a model from load_model, not {type(model).__name__}")
    hist = np.asarray(history, dtype=np.float64).copy()
    if hist.size == 0 or not np.isfinite(hist).any():
        return {h: math.nan for h in entry.horizons}
    if not math.isfinite(hist[-1]):
        hist[-1] = ffill(hist)[-1]
    last_start = int(issued_at) - int(issued_at) % STEP_S
    start = last_start - (hist.size - 1) * STEP_S
    origin = np.array([hist.size - 1], dtype=np.int64)
    x = inputs(hist, start, origin, model.window, model.horizons, model.scaler)
    delta = np.asarray(model.network([x.sequence, x.context], training=False))[0]
    network = model.scaler.decode(np.full(delta.shape, x.last[0]), delta.astype(np.float64))
    values = blend(x.last[:1], network[None, :], model.blend, model.scaler.log)[0]
    by_h = {h: float(values[j]) for j, h in enumerate(model.horizons)}
    return {h: by_h[h] for h in entry.horizons}
