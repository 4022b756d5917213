"""Known answer: on a series with a learnable pattern (a daily cycle plus noise) the
network beats persistence, is served, and its 80 % interval covers about 80 % of the
held-out values. No Ray here: the fit of one series, as a Ray Train worker runs it."""

from __future__ import annotations

import numpy as np
import pytest

from aircast.forecasting import DAY_STEPS, Series
from training.model import FitConfig, build_model, configure_threads, fit_series, pretrain

T0 = 1_551_398_400


@pytest.mark.slow  # a real fit (TensorFlow): the whole suite's, not the inner loop's
def test_network_beats_persistence_on_a_daily_cycle() -> None:
    configure_threads(1)
    rng = np.random.default_rng(11)
    t = np.arange(8 * DAY_STEPS)
    values = 15.0 + 6.0 * np.sin(2 * np.pi * t / DAY_STEPS) + rng.normal(0.0, 0.3, t.size)
    series = Series(7, "temperature", T0, values)
    cfg = FitConfig(window=12, horizons=(1, 6, 36), epochs=15, batch_size=64, units=8)
    result = fit_series(series, 6 * DAY_STEPS, cfg)
    assert result.model is not None and result.served.kind == "rnn"
    assert result.test is not None
    test = result.test.metrics()
    # Persistence drifts with the cycle; the network knows the time of day.
    assert test["6h"]["skill"] > 0.3
    assert test["1h"]["served_skill"] > 0.1, test
    for row in test.values():
        assert row["served_skill"] >= 0.0, test
        assert row["coverage"] == pytest.approx(0.8, abs=0.12), test


def _cycle(sensor: int, days: int, seed: int, amplitude: float = 6.0) -> Series:
    rng = np.random.default_rng(seed)
    t = np.arange(days * DAY_STEPS)
    values = 15.0 + amplitude * np.sin(2 * np.pi * t / DAY_STEPS) + rng.normal(0.0, 0.3, t.size)
    return Series(sensor, "temperature", T0, values)


@pytest.mark.slow
def test_a_head_fine_tune_keeps_the_pretrained_gru_and_beats_persistence() -> None:
    """The nightly path: a network pre-trained on other sensors' series, then only its
    dense head fitted to this sensor's series (the GRU stays exactly as pre-trained)."""
    configure_threads(1)
    cfg = FitConfig(
        window=12, horizons=(1, 6, 36), epochs=15, batch_size=64, units=8, finetune="head"
    )
    others = [(_cycle(s, 6, seed=s, amplitude=4.0 + s), None) for s in (1, 2, 3)]
    init = pretrain(others, cfg, epochs=3)
    result = fit_series(_cycle(9, 8, seed=9), 6 * DAY_STEPS, cfg, init)
    assert result.model is not None and result.served.kind == "rnn"
    gru = result.model.get_layer("gru").get_weights()
    pretrained = build_model(cfg.window, len(cfg.horizons), cfg.units)
    pretrained.set_weights(init)
    for fitted, before in zip(gru, pretrained.get_layer("gru").get_weights(), strict=True):
        np.testing.assert_array_equal(fitted, before)
    head = result.model.get_layer("delta").get_weights()[0]
    assert not np.array_equal(head, pretrained.get_layer("delta").get_weights()[0])
    assert result.test is not None
    test = result.test.metrics()
    assert test["6h"]["skill"] > 0.3, test
    for row in test.values():
        assert row["served_skill"] >= 0.0, test
