"""Alert rules and episodes (pure, no server): validation with its reasons, once per
episode, one resolution, replays and restarts that do not fire again, forecast rules;
and the simulator's excursion that the end-to-end test drives a sensor with."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from aircast import tuning
from aircast.alerts import (
    Alert,
    BBox,
    Engine,
    Episode,
    Observation,
    Rule,
    RuleSpec,
    forecast_observation,
    step,
)
from aircast.records import Aggregate, split_record
from aircast.simulator import NO_FAULTS, Excursion, Network

W = 600
T0 = 1_800_000_000 - 1_800_000_000 % W  # a window start


def rule(**over: Any) -> Rule:
    spec: dict[str, Any] = {
        "name": "PM2.5 high",
        "measure": "P2",
        "threshold": 25.0,
        "duration_s": 1800,
        "sensors": [7],
        "id": "a" * 32,
        "created_at": 0,
    }
    spec.update(over)
    return Rule(**spec)


def obs(i: int, value: float, sensor: int = 7) -> Observation:
    """The observation of window number ``i`` after T0."""
    return Observation(sensor, T0 + i * W, T0 + (i + 1) * W, value, 48.0, 9.0, "Stuttgart", "DE")


def run(
    r: Rule, values: list[tuple[int, float]], episode: Episode | None = None
) -> tuple[Episode, list[Alert]]:
    e = episode or Episode()
    out = []
    for i, v in values:
        e, alert = step(r, e, obs(i, v))
        if alert is not None:
            out.append(alert)
    return e, out


# -- validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"measure": "PM25"}, "unknown measure 'PM25'"),
        ({"threshold": 1000.0}, "must be in [0.0, 999.9)"),
        ({"threshold": 999.9}, "must be in [0.0, 999.9)"),  # above the top: never fires
        ({"threshold": -1.0}, "must be in [0.0, 999.9)"),
        ({"op": "below", "threshold": 0.0}, "must be in (0.0, 999.9]"),
        ({"measure": "temperature", "threshold": 70.0}, "[-50.0, 60.0)"),
        ({"threshold": float("nan")}, "finite number"),
        ({"duration_s": 300}, "multiple of 600 s"),
        ({"duration_s": 900}, "multiple of 600 s"),
        ({"duration_s": 0}, "at least 600"),
        ({"duration_s": 8 * 86_400}, "at most 604800"),
        ({"clear_s": 60}, "clear_s must be a multiple"),
        ({"forecast_horizon_s": 1000}, "forecast_horizon_s must be a multiple"),
        ({"sensors": None}, "exactly one of bbox"),
        ({"bbox": {"south": 48, "west": 9, "north": 49, "east": 10}}, "exactly one of bbox"),
        ({"sensors": []}, "at least 1 item"),
        ({"sensors": [-3]}, "sensor ids are in [0, 1000000000000]"),
        ({"sensors": [10**13]}, "sensor ids are in [0, 1000000000000]"),
        ({"webhook_url": "ftp://example.org/x"}, "http(s) URL"),
        ({"webhook_url": "http://[::1"}, "http(s) URL"),
        ({"webhook_url": "http:///path"}, "http(s) URL"),
        ({"op": "over"}, "'above' or 'below'"),
        ({"name": ""}, "at least 1 character"),
        ({"colour": "red"}, "Extra inputs are not permitted"),
    ],
)
def test_a_bad_rule_is_refused_with_its_reason(over: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError) as info:
        rule(**over)
    assert reason in str(info.value)


def test_a_bbox_must_be_ordered_and_may_cross_the_antimeridian() -> None:
    with pytest.raises(ValidationError, match=r"south 50\.0 is north of north 40\.0"):
        BBox(south=50, west=0, north=40, east=10)
    pacific = BBox(south=-50, west=170, north=-30, east=-170)
    assert pacific.contains(-40, 175) and pacific.contains(-40, -175)
    assert not pacific.contains(-40, 0)
    europe = BBox(south=35, west=-10, north=60, east=30)
    assert europe.contains(48.78, 9.18) and not europe.contains(40.7, -74.0)


def test_a_spec_keeps_sensor_ids_sorted_once() -> None:
    assert rule(sensors=[9, 3, 9]).sensors == (3, 9)
    assert RuleSpec(name="x", measure="P1", threshold=50, sensors=(1,)).duration_s == 600


# -- episodes -----------------------------------------------------------------------


def test_one_alert_per_episode_and_one_resolution() -> None:
    r = rule()
    values = [(0, 10.0), (1, 30.0), (2, 31.0), (3, 40.0), (4, 35.0), (5, 33.0), (6, 12.0)]
    e, alerts = run(r, values)
    assert [(a.status, a.since, a.at) for a in alerts] == [
        ("fired", T0 + W, T0 + 4 * W),  # 3 windows above = duration 1800 s
        ("resolved", T0 + W, T0 + 7 * W),
    ]
    fired, resolved = alerts
    assert fired.value == 40.0 and fired.peak == 40.0
    assert resolved.value == 12.0 and resolved.peak == 40.0
    assert fired.id == f"{'a' * 32}:7:{T0 + W}:fired"
    assert fired.city == "Stuttgart" and fired.unit == "µg/m³" and fired.kind == "observed"
    assert e == Episode(last_end=T0 + 7 * W)


def test_at_the_threshold_is_not_above_it() -> None:
    _, alerts = run(rule(duration_s=600), [(0, 25.0), (1, 25.0)])
    assert alerts == []


def test_a_short_excursion_does_not_fire() -> None:
    _, alerts = run(rule(), [(0, 30.0), (1, 30.0), (2, 10.0), (3, 30.0), (4, 30.0), (5, 10.0)])
    assert alerts == []


def test_a_missing_window_breaks_the_run() -> None:
    _, alerts = run(rule(duration_s=1200), [(0, 30.0), (2, 30.0), (4, 30.0)])
    assert alerts == []
    _, alerts = run(rule(duration_s=1200), [(0, 30.0), (2, 30.0), (3, 30.0)])
    assert [a.status for a in alerts] == ["fired"]


def test_a_dip_shorter_than_clear_s_does_not_resolve() -> None:
    r = rule(duration_s=600, clear_s=1200)
    _, alerts = run(r, [(0, 30.0), (1, 10.0), (2, 30.0), (3, 10.0), (4, 10.0), (5, 10.0)])
    assert [(a.status, a.at) for a in alerts] == [("fired", T0 + W), ("resolved", T0 + 5 * W)]


def test_no_data_does_not_resolve_a_firing_episode() -> None:
    r = rule(duration_s=600)
    e, alerts = run(r, [(0, 30.0), (9, 40.0)])
    assert [a.status for a in alerts] == ["fired"] and e.firing and e.peak == 40.0


def test_a_replay_neither_fires_again_nor_moves_back() -> None:
    r = rule()
    values = [(i, 30.0) for i in range(6)]
    e, alerts = run(r, values)
    assert len(alerts) == 1
    again, more = run(r, values, e)  # the same aggregates read again (at-least-once)
    assert more == [] and again == e
    e2, late = run(r, [(2, 5.0)], e)  # an older window's aggregate: ignored
    assert late == [] and e2 == e


def test_an_episode_survives_its_round_trip_through_json() -> None:
    r = rule()
    e, alerts = run(r, [(0, 30.0), (1, 30.0), (2, 30.0)])
    assert len(alerts) == 1
    restored = Episode.from_dict(json.loads(json.dumps(e.to_dict())))
    assert restored == e
    _, after = run(r, [(3, 30.0), (4, 30.0), (5, 30.0), (6, 30.0), (7, 1.0)], restored)
    assert [a.status for a in after] == ["resolved"]
    pending, _ = run(r, [(0, 30.0), (1, 30.0)])
    assert Episode.from_dict(json.loads(json.dumps(pending.to_dict()))) == pending


def test_below_rules_fire_below() -> None:
    r = rule(measure="temperature", op="below", threshold=-10.0, duration_s=600)
    _, alerts = run(r, [(0, -5.0), (1, -12.0), (2, -15.0), (3, -9.0)])
    assert [(a.status, a.value, a.peak) for a in alerts] == [
        ("fired", -12.0, -12.0),
        ("resolved", -9.0, -15.0),
    ]


# -- the engine over aggregates ----------------------------------------------------------


def aggregate(
    i: int, mean: float, sensor: int = 7, measure: str = "P2", lat: float = 48.0
) -> Aggregate:
    return Aggregate(
        sensor, "SDS011", 1, lat, 9.0, "DE", "Germany", "Stuttgart", measure,
        T0 + i * W, T0 + (i + 1) * W, mean, mean, mean, 4,
    )  # fmt: skip


def test_the_engine_applies_rules_by_measure_and_area() -> None:
    engine = Engine()
    area = rule(id="b" * 32, sensors=None, bbox={"south": 47, "west": 8, "north": 49, "east": 10})
    listed = rule(id="c" * 32, sensors=[8], duration_s=600)
    engine.load(area, {})
    engine.load(listed, {})
    now = T0 + 10 * W
    alerts = []
    for i in range(3):
        alerts += engine.aggregate(aggregate(i, 40.0), now)  # in the area
        alerts += engine.aggregate(aggregate(i, 40.0, sensor=9, lat=52.0), now)  # outside
        alerts += engine.aggregate(aggregate(i, 40.0, sensor=8, measure="P1"), now)  # other measure
    assert [(a.rule_id, a.sensor_id, a.status) for a in alerts] == [("b" * 32, 7, "fired")]
    changed = engine.take_changes()
    assert set(changed) == {("b" * 32, 7)} and changed[("b" * 32, 7)].firing
    assert engine.take_changes() == {}


def test_the_engine_passes_over_old_aggregates() -> None:
    engine = Engine()
    engine.load(rule(duration_s=600), {})
    assert engine.aggregate(aggregate(0, 90.0), now=T0 + W + tuning.ALERT_MAX_AGE_S + 1) == []
    assert engine.stale == 1
    assert len(engine.aggregate(aggregate(1, 90.0), now=T0 + 2 * W)) == 1


def test_a_restarted_engine_resumes_from_the_stored_episodes() -> None:
    r = rule()
    first = Engine()
    first.load(r, {})
    now = T0 + 20 * W
    fired = [a for i in range(4) for a in first.aggregate(aggregate(i, 40.0), now)]
    assert [a.status for a in fired] == ["fired"]
    stored = {s: Episode.from_dict(e.to_dict()) for (_, s), e in first.take_changes().items()}
    second = Engine()  # a restart: episodes from the store, aggregates read again
    second.load(r, stored)
    again = [a for i in range(8) for a in second.aggregate(aggregate(i, 40.0), now)]
    assert again == []
    last = second.aggregate(aggregate(8, 3.0), now)
    assert [a.status for a in last] == ["resolved"]


def test_a_dropped_rule_forgets_its_episodes() -> None:
    engine = Engine()
    engine.load(rule(duration_s=600), {})
    engine.aggregate(aggregate(0, 40.0), T0 + W)
    engine.drop("a" * 32)
    assert engine.rules == {} and engine.take_changes() == {}


# -- forecast rules ---------------------------------------------------------------------


def forecast(based_on: int, values: dict[int, float], sensor: int = 7) -> dict[str, Any]:
    return {
        "sensor_id": sensor,
        "measure": "P2",
        "issued_at": based_on + W,
        "based_on": based_on,
        "points": [
            {"horizon_steps": h, "horizon": f"{h}", "time": based_on + h * W, "value": v}
            for h, v in values.items()
        ],
    }


def test_a_forecast_rule_takes_the_worst_point_within_its_horizon() -> None:
    r = rule(forecast_horizon_s=6 * 3600, duration_s=600)
    o = forecast_observation(r, forecast(T0, {1: 10.0, 6: 30.0, 36: 20.0}))
    assert o is not None and (o.value, o.forecast_time, o.start, o.end) == (
        30.0, T0 + 6 * W, T0, T0 + W,
    )  # fmt: skip
    one_hour = rule(forecast_horizon_s=3600, duration_s=600)
    o = forecast_observation(one_hour, forecast(T0, {1: 10.0, 6: 12.0, 36: 80.0}))
    assert o is not None and o.value == 12.0
    short = rule(forecast_horizon_s=600, duration_s=600)
    assert forecast_observation(short, forecast(T0, {6: 90.0})) is None
    assert forecast_observation(r, {"points": "garbage"}) is None


def test_a_forecast_rule_fires_once_and_resolves_once() -> None:
    engine = Engine()
    r = rule(forecast_horizon_s=6 * 3600, duration_s=600)
    engine.load(r, {})
    seen: list[Alert] = []
    series = [{6: 30.0}, {6: 31.0}, {6: 31.0}, {6: 20.0}]
    for i, values in enumerate(series):
        f = forecast(T0 + i * W, values)
        seen += engine.forecasts(r, [f])
        seen += engine.forecasts(r, [f])  # checked again before the next refresh
    assert [(a.status, a.kind, a.forecast_time) for a in seen] == [
        ("fired", "forecast", T0 + 6 * W),
        ("resolved", "forecast", T0 + 9 * W),
    ]


def test_forecast_rules_over_an_area_look_at_sensors_seen_there() -> None:
    engine = Engine()
    r = rule(
        forecast_horizon_s=3600,
        sensors=None,
        bbox={"south": 47, "west": 8, "north": 49, "east": 10},
    )
    engine.load(r, {})
    assert engine.forecast_sensors(r) == []
    engine.aggregate(aggregate(0, 5.0, sensor=11), T0 + W)
    engine.aggregate(aggregate(0, 5.0, sensor=12, lat=52.0), T0 + W)
    engine.aggregate(aggregate(0, 5.0, sensor=13, measure="P1"), T0 + W)
    assert engine.forecast_sensors(r) == [11]
    assert engine.forecast_rules() == [r]


# -- the simulator's excursion ------------------------------------------------------------


def test_an_excursion_holds_one_sensor_near_its_level_for_its_time() -> None:
    plain = Network(20, seed=3, faults=NO_FAULTS)
    pm = next(s for s in plain.sensors if "P2" in s.value_types)
    start, end = T0, T0 + 3 * W
    net = Network(
        20, seed=3, faults=NO_FAULTS, excursions=(Excursion(pm.sensor_id, "P2", start, end, 80.0),)
    )
    inside = [net.value(pm, "P2", t) for t in range(start, end, 145)]
    assert all(78 < v < 82 for v in inside)
    for t in (start - 145, end, end + 1000):
        assert net.value(pm, "P2", t) == plain.value(pm, "P2", t)
        assert net.value(pm, "P1", t) == plain.value(pm, "P1", t)
    # Records carry it: the readings split from them are over the level.
    values = [
        r.value
        for t in net.reading_times(pm, start, end)
        for r in split_record(net.record(pm, t))
        if not hasattr(r, "reason") and r.measure == "P2"
    ]
    assert values and min(values) > 70
    with pytest.raises(ValueError, match="start < end"):
        Excursion(1, "P2", 10, 10, 1.0)
