"""Forecasting domain (numpy only): the grid handles gaps, duplicates and sensors that
come and go; baselines and rolling-origin scores give the known answers on a pure
daily cycle (seasonal-naive exact, persistence analytically known)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aircast.forecasting import (
    DAY_STEPS,
    STEP_S,
    ErrorSums,
    Scaler,
    baseline_forecast,
    best_baseline,
    blend,
    choose_blend,
    ffill,
    grid,
    inputs,
    interval_bounds,
    interval_of,
    residual_quantiles,
    score_baselines,
    series_from_aggregates,
    skill,
    targets,
    usable_origins,
)
from aircast.records import Aggregate

T0 = 1_551_398_400  # 2019-03-01 00:00 UTC
HORIZONS = (1, 6, 36)


def _agg(sensor: int, measure: str, start: int, mean: float) -> Aggregate:
    return Aggregate(
        sensor,
        "SDS011",
        1,
        57.1,
        -2.1,
        "GB",
        "",
        "",
        measure,
        start,
        start + 600,
        mean,
        mean,
        mean,
        1,
    )


def test_grid_gaps_duplicates_unaligned() -> None:
    start, values = grid([(T0 + 1200, 3.0), (T0, 1.0), (T0 + 1200, 5.0), (T0 + 3000 + 17, 9.0)])
    assert start == T0
    assert values.size == 6
    assert values[0] == 1.0 and values[2] == 4.0 and values[5] == 9.0  # duplicate averaged
    assert np.isnan(values[[1, 3, 4]]).all()
    # A fixed span: the series is padded with gaps up to the end (exclusive).
    start, values = grid([(T0 + 600, 2.0)], start=T0, end=T0 + 3600)
    assert start == T0 and values.size == 6 and np.isfinite(values).sum() == 1
    assert grid([]) == (0, pytest.approx(np.zeros(0)))


def test_series_from_aggregates_sensors_come_and_go() -> None:
    aggs = [_agg(1, "P1", T0 + i * STEP_S, float(i)) for i in range(10)]
    aggs += [_agg(2, "P1", T0 + i * STEP_S, 1.0) for i in range(5, 8)]  # appears, goes
    aggs += [_agg(1, "P2", T0, 1.0), _agg(1, "humidity", T0, 50.0)]
    series = series_from_aggregates(aggs, ["P1", "P2"], end=T0 + 12 * STEP_S)
    assert [s.key for s in series] == ["P1:1", "P1:2", "P2:1"]
    s2 = series[1]
    assert s2.start == T0 + 5 * STEP_S and s2.values.size == 7
    assert np.isfinite(s2.values).sum() == 3
    assert s2.index_of(T0 + 6 * STEP_S) == 1


def test_ffill_and_usable_origins() -> None:
    v = np.array([np.nan, 1.0, np.nan, np.nan, 4.0, np.nan])
    assert ffill(v).tolist() == [1.0, 1.0, 1.0, 1.0, 4.0, 4.0]
    values = np.arange(20.0)
    values[10:15] = np.nan
    origins = usable_origins(values, window=4)
    assert 9 in origins and 10 not in origins and 15 not in origins  # last value a gap
    assert 16 in origins  # 13..16: two of four known, at most half gaps
    assert 0 not in origins  # a window of 4 with 3 before the start


def test_inputs_are_relative_to_last_value() -> None:
    values = np.linspace(0.0, 10.0, 400)
    scaler = Scaler.fit(values)
    origins = np.array([200, 399])
    x = inputs(values, T0, origins, 36, HORIZONS, scaler)
    assert x.sequence.shape == (2, 36, 4)
    assert x.context.shape == (2, 2 + 2 * len(HORIZONS))
    assert np.allclose(x.sequence[:, -1, 0], 0.0)  # the last value, relative to itself
    assert np.all(x.sequence[:, :-1, 0] < 0)  # a rising series: the past was lower
    assert x.last.tolist() == [values[200], values[399]]
    log = Scaler.fit(np.array([0.0, 10.0, 100.0]), log=True)
    assert log.decode(np.array([10.0]), log.delta(np.array([10.0]), np.array([50.0])))[
        0
    ] == pytest.approx(50.0)


def test_baseline_forecast() -> None:
    history = np.arange(144.0)
    assert baseline_forecast("persistence", history, HORIZONS) == {1: 143.0, 6: 143.0, 36: 143.0}
    # Same time yesterday: horizon h is h steps after the last value, 144 - h before it.
    assert baseline_forecast("seasonal_naive", history, HORIZONS) == {1: 0.0, 6: 5.0, 36: 35.0}
    history[-1] = np.nan
    history[5] = np.nan
    assert baseline_forecast("persistence", history, (1,)) == {1: 142.0}
    assert baseline_forecast("seasonal_naive", history, (6,)) == {6: 142.0}  # gap → persistence
    assert baseline_forecast("seasonal_naive", np.arange(10.0), (1,)) == {1: 9.0}  # short
    assert math.isnan(baseline_forecast("persistence", np.full(3, np.nan), (1,))[1])
    with pytest.raises(ValueError):
        baseline_forecast("climatology", history, (1,))


def test_daily_cycle_known_scores() -> None:
    amplitude = 10.0
    t = np.arange(10 * DAY_STEPS)
    values = 20.0 + amplitude * np.sin(2 * np.pi * t / DAY_STEPS)
    origins = np.arange(DAY_STEPS, 8 * DAY_STEPS)  # seven whole days of origins
    metrics = score_baselines(values, origins, HORIZONS).metrics()
    for h in HORIZONS:
        row = metrics[{1: "10m", 6: "1h", 36: "6h"}[h]]
        assert row["n"] == 7 * DAY_STEPS
        assert row["seasonal_naive_mae"] == pytest.approx(0.0, abs=1e-9)
        # |sin(a + d) - sin(a)| = 2 |sin(d/2)| |cos(a + d/2)|; mean |cos| = 2/π.
        half = math.sin(math.pi * h / DAY_STEPS)
        assert row["persistence_mae"] == pytest.approx(4 * amplitude / math.pi * half, rel=1e-3)
        assert row["persistence_rmse"] == pytest.approx(math.sqrt(2) * amplitude * half, rel=1e-9)
    assert best_baseline(metrics) == "seasonal_naive"


def test_error_sums_merge_and_skill() -> None:
    actual = np.array([[1.0], [2.0], [np.nan]])
    a = ErrorSums((1,))
    a.add(
        actual,
        {"model": np.array([[1.5], [2.0], [9.0]]), "persistence": np.array([[0.0], [3.0], [1.0]])},
    )
    b = ErrorSums.from_dict(a.to_dict())
    a.merge(b)
    row = a.metrics()["10m"]
    assert row["n"] == 4  # the NaN target is not scored
    assert row["model_mae"] == pytest.approx(0.25)
    assert row["persistence_mae"] == pytest.approx(1.0)
    assert row["skill"] == pytest.approx(0.75)
    assert skill(0.0, 0.0) == 0.0
    assert targets(np.arange(5.0), np.array([3]), (1, 2))[0].tolist()[0] == 4.0


def test_damped_blend_never_loses_to_persistence_on_its_own_window() -> None:
    rng = np.random.default_rng(3)
    last = rng.normal(10.0, 1.0, 500)
    actual = (last + rng.normal(0.0, 1.0, 500))[:, None].repeat(2, axis=1)
    actual[:, 1] = last + 2.0  # horizon 2: the future is the last value plus 2
    # The network: pure noise at horizon 1 (persistence is better), exact at horizon 2.
    network = np.stack([last + rng.normal(0.0, 3.0, 500), last + 2.0], axis=1)
    alphas = choose_blend(last, network, actual, log=False)
    assert alphas == (0.0, 1.0)
    served = blend(last, network, alphas, log=False)
    assert np.allclose(served[:, 0], last) and np.allclose(served[:, 1], actual[:, 1])
    # In log space the damping is multiplicative and persistence stays exact.
    z = blend(np.array([9.0]), np.array([[99.0]]), (0.5,), log=True)
    assert z[0, 0] == pytest.approx(math.expm1(0.5 * (math.log(10.0) + math.log(100.0))))


def test_interval_from_residual_quantiles_covers_eighty_percent() -> None:
    rng = np.random.default_rng(5)
    forecast = np.full((4000, 1), 20.0)
    val = forecast + rng.normal(0.0, 2.0, (4000, 1))
    quantiles = residual_quantiles(forecast, val, log=False)
    assert quantiles[0][0] == pytest.approx(-1.2816 * 2.0, rel=0.1)
    test = forecast + rng.normal(0.0, 2.0, (4000, 1))
    sums = ErrorSums((1,))
    sums.add(test, {"served": forecast}, interval_bounds(forecast, quantiles, log=False))
    assert sums.metrics()["10m"]["coverage"] == pytest.approx(0.8, abs=0.03)
    assert ErrorSums.from_dict(sums.to_dict()).covered == sums.covered
    low, high = interval_of(10.0, (-0.1, 0.2), log=True)  # multiplicative in log space
    assert low == pytest.approx(math.expm1(math.log(11.0) - 0.1))
    assert high == pytest.approx(math.expm1(math.log(11.0) + 0.2))
