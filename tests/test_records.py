"""The domain model: envelope checks, per-value validation, reasons, line protocol."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from influxdb_client import Point, WritePrecision

from aircast import records as R
from aircast.errors import InvalidRecord
from aircast.measures import MEASURES
from aircast.settings import Settings

SAMPLE = Settings().data.feed_sample


@pytest.fixture(scope="module")
def feed() -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(Path(SAMPLE).read_text())
    return data


def good() -> dict[str, Any]:
    return {
        "id": 1,
        "timestamp": "2019-04-16 14:22:52",
        "location": {"id": 220, "latitude": "48.7400", "longitude": "9.3160", "country": "DE"},
        "sensor": {"id": 468, "sensor_type": {"name": "DHT22"}},
        "sensordatavalues": [
            {"value": "64.20", "value_type": "humidity"},
            {"value": "21.70", "value_type": "temperature"},
        ],
        "place": {
            "city": "Esslingen",
            "region": "Baden-Württemberg",
            "country": "Germany",
            "country_code": "DE",
        },
    }


def test_real_feed_sample_splits_into_readings(feed: list[dict[str, Any]]) -> None:
    outcomes = [o for rec in feed for o in R.split_record(rec)]
    assert len(outcomes) == sum(len(r["sensordatavalues"]) for r in feed)
    readings = [o for o in outcomes if isinstance(o, R.Reading)]
    assert len(readings) == 488
    assert {r.measure for r in readings} >= {"P1", "P2", "temperature", "humidity"}


def test_each_measure_routes_to_itself() -> None:
    # The original job's filters all captured the loop variable's last value, so every
    # measure went to the wrong place. Here each value keeps its own measure.
    rec = good()
    rec["sensordatavalues"] = [
        {"value": str((m.low + m.high) / 2), "value_type": m.name} for m in MEASURES
    ]
    readings = [o for o in R.split_record(rec) if isinstance(o, R.Reading)]
    assert [r.measure for r in readings] == [m.name for m in MEASURES]
    assert all(
        r.value == (R.BY_NAME[r.measure].low + R.BY_NAME[r.measure].high) / 2 for r in readings
    )


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda r: r.pop("location"), R.MISSING_FIELD),
        (lambda r: r.__setitem__("location", "x"), R.MALFORMED),
        (lambda r: r.pop("timestamp"), R.MISSING_FIELD),
        (lambda r: r.__setitem__("timestamp", "yesterday"), R.BAD_TIMESTAMP),
        (lambda r: r["location"].update(latitude="0", longitude="0"), R.ZERO_COORDINATES),
        (lambda r: r["location"].update(latitude="north"), R.BAD_COORDINATES),
        (lambda r: r["location"].update(latitude="91"), R.BAD_COORDINATES),
        (lambda r: r["sensor"].pop("id"), R.MISSING_FIELD),
        (lambda r: r["sensor"].__setitem__("sensor_type", {}), R.MISSING_FIELD),
        (lambda r: r.__setitem__("sensordatavalues", []), R.MISSING_FIELD),
        (lambda r: r["sensordatavalues"].append("x"), R.MALFORMED),
    ],
)
def test_broken_envelopes_are_one_rejection_with_reason(mutate: Any, reason: str) -> None:
    rec = good()
    mutate(rec)
    out = R.split_record(rec)
    assert len(out) == 1 and isinstance(out[0], R.Rejection)
    assert out[0].reason == reason
    assert out[0].values == R.value_count(rec)


def test_not_an_object_is_malformed() -> None:
    assert R.split_record([1, 2]) == [R.Rejection(R.MALFORMED, "record is list, not an object")]


@pytest.mark.parametrize(
    ("value_type", "value", "reason"),
    [
        ("humidity", "", R.NOT_NUMERIC),
        ("humidity", "wet", R.NOT_NUMERIC),
        ("humidity", "nan", R.NOT_NUMERIC),
        ("humidity", "inf", R.NOT_NUMERIC),
        ("humidity", "100.1", R.OUT_OF_RANGE),
        ("P1", "1999.0", R.OUT_OF_RANGE),
        ("P1", "-0.5", R.OUT_OF_RANGE),
        ("durP1", "10", R.UNKNOWN_TYPE),
    ],
)
def test_bad_values_are_rejected_one_by_one(value_type: str, value: str, reason: str) -> None:
    rec = good()
    rec["sensordatavalues"][0] = {"value": value, "value_type": value_type}
    out = R.split_record(rec)
    assert isinstance(out[0], R.Rejection) and out[0].reason == reason
    assert isinstance(out[1], R.Reading) and out[1].measure == "temperature"


def test_indoor_sensor_values_are_rejected() -> None:
    rec = good()
    rec["location"]["indoor"] = 1
    out = R.split_record(rec)
    assert [o.reason for o in out if isinstance(o, R.Rejection)] == [R.INDOOR, R.INDOOR]


def test_boundaries_are_valid() -> None:
    assert R.check_value("humidity", "100.0") == 100.0
    assert R.check_value("P2", "0") == 0.0
    with pytest.raises(InvalidRecord) as info:
        R.check_value("P2", "1000")
    assert info.value.reason == R.OUT_OF_RANGE


def test_timestamps_are_utc() -> None:
    assert R.parse_timestamp("2019-04-16 14:22:52") == 1555424572
    assert R.parse_timestamp("2019-03-01T00:00:16") == 1551398416
    assert R.format_timestamp(1555424572) == "2019-04-16 14:22:52"


def test_json_roundtrips() -> None:
    reading = next(o for o in R.split_record(good()) if isinstance(o, R.Reading))
    assert R.Reading.from_json(reading.to_json()) == reading
    agg = R.Aggregate.of([reading, replace(reading, value=70.0)], R.window_start(1555424572))
    assert R.Aggregate.from_json(agg.to_json()) == agg
    assert (agg.count, agg.min, agg.max, agg.mean) == (2, 64.2, 70.0, (64.2 + 70.0) / 2)
    assert agg.window_start == 1555424400 and agg.window_end == 1555425000
    letter = R.DeadLetter("flink", R.OUT_OF_RANGE, "P1=2000", '{"x":1}', "1", 1, 5)
    assert R.DeadLetter.from_json(letter.to_json()) == letter
    with pytest.raises(InvalidRecord) as info:
        R.Reading.from_json(b"{not json")
    assert info.value.reason == R.UNDECODABLE


def _point(measurement: str, tags: dict[str, str], fields: dict[str, Any], t: int) -> str:
    p = Point(measurement)
    for k, v in tags.items():
        if v:
            p.tag(k, v)
    for k, v in fields.items():
        p.field(k, v)
    return str(p.time(t, WritePrecision.S).to_line_protocol())


@pytest.mark.parametrize("city", ["Aberdeen", "Bad Homburg, v.d.H=x", "São Paulo", ""])
@pytest.mark.parametrize("value", [12.0, 12.5, 0.1 + 0.2, 101325.0, -3.25, 1e-7])
def test_line_protocol_matches_influxdb_client_point(city: str, value: float) -> None:
    rec = copy.deepcopy(good())
    rec["place"]["city"] = city
    r = next(o for o in R.split_record(rec) if isinstance(o, R.Reading))
    r = replace(r, value=value)
    tags = {
        "city": r.city,
        "country": r.country,
        "country_code": r.country_code,
        "lat": str(r.latitude),
        "location_id": str(r.location_id),
        "lon": str(r.longitude),
        "sensor_id": str(r.sensor_id),
        "sensor_type": r.sensor_type,
    }
    assert r.line() == _point(r.measure, tags, {"value": r.value}, r.timestamp)
    agg = R.Aggregate.of([r], R.window_start(r.timestamp))
    assert agg.line() == _point(
        agg.measure,
        tags,
        {
            "mean": agg.mean,
            "min": agg.min,
            "max": agg.max,
            "count": agg.count,
        },
        agg.window_start,
    )


def _odd_messages(base: dict[str, Any]) -> list[bytes]:
    """A reading as JSON, then variants from_dict converts (or refuses) its own way."""
    variants: list[dict[str, Any]] = [base]
    for field, value in [
        ("sensor_id", "468"),  # a numeric string: converted
        ("sensor_id", 468.0),  # a float id: converted, must not share 468's cache entry
        ("sensor_id", True),  # a bool: int(True)
        ("city", 1),  # a number where text is expected: str() ...
        ("city", 1.0),  # ... equal to 1 but "1.0": must not hit 1's cache entry
        ("city", True),  # ... and "True"
        ("city", ["a"]),  # unhashable: the fast path cannot cache it, the full decode can
        ("latitude", "57.1"),
        ("value", "12.5"),
        ("value", "high"),  # not a number
        ("timestamp", "1555424572"),
        ("timestamp", 1555424572.9),
        ("timestamp", None),
        ("sensor_id", None),
        ("measure", None),
    ]:
        variants.append({**base, field: value})
    missing = dict(base)
    del missing["country"]
    variants.append(missing)
    return [json.dumps(v).encode() for v in variants] + [b"{not json", b"[]", b"null", b'"x"']


def test_line_of_json_is_from_json_then_line() -> None:
    """The collector's fast path gives the same line, time and error as the full decode,
    also for messages the full decode converts or refuses in its own way."""
    reading = next(o for o in R.split_record(good()) if isinstance(o, R.Reading))
    messages = _odd_messages(orjson.loads(reading.to_json()))
    outcomes = []
    for message in messages * 2:  # the second pass goes through the warm cache
        try:
            full = R.Reading.from_json(message)
            expected: tuple[str, int] | str = (full.line(), full.timestamp)
        except InvalidRecord as exc:
            expected = exc.reason
        try:
            got: tuple[str, int] | str = R.Reading.line_of_json(message)
        except InvalidRecord as exc:
            got = exc.reason
        assert got == expected, message
        outcomes.append(got)
    assert outcomes[0] == (reading.line(), reading.timestamp)
    # The variants do exercise both sides: some converted, some refused.
    assert sum(isinstance(o, tuple) for o in outcomes) >= 14
    assert sum(o == R.UNDECODABLE for o in outcomes) >= 10


def _stdlib_json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def test_a_feed_record_is_written_as_the_standard_library_writes_it(
    feed: list[dict[str, Any]],
) -> None:
    # The real sample, enriched as the ingest enriches it (non-ASCII place names).
    for rec in feed:
        enriched = dict(rec, place=good()["place"])
        assert R.dumps_feed(enriched) == _stdlib_json(enriched)
    # What orjson writes otherwise (NaN as null) or refuses (beyond 64 bits) takes the
    # standard library: the same bytes, not a changed value.
    odd = [
        dict(good(), location=dict(good()["location"], latitude=float("nan"))),
        dict(good(), altitude=float("inf")),
        dict(good(), id=2**70),
        {"sensordatavalues": [{"value": -float("inf")}], "ok": [1.5, "é", None, True]},
    ]
    for rec in odd:
        assert R.dumps_feed(rec) == _stdlib_json(rec)
    assert b"NaN" in R.dumps_feed(odd[0]) and b"Infinity" in R.dumps_feed(odd[1])


@pytest.mark.parametrize(
    ("record_id", "expected"),
    [
        (3379485925, 3379485925),
        ("3379485925", 3379485925),
        (2**63 - 1, 2**63 - 1),
        (2**63, None),  # beyond what consumers store (and orjson writes)
        ("1" * 30, None),
        ("²", None),  # a digit to str.isdigit, not to int()
        ("٣", None),  # a decimal digit, not an ASCII one
        (-5, None),
        (True, None),
        (1.0, None),
        ("", None),
        (None, None),
    ],
)
def test_a_record_id_is_kept_only_when_it_is_one(record_id: Any, expected: int | None) -> None:
    rec = good()
    rec["id"] = record_id
    readings = [o for o in R.split_record(rec) if isinstance(o, R.Reading)]
    assert len(readings) == 2 and {r.record_id for r in readings} == {expected}
    # Each reading writes (the Flink job's split once failed on such ids, every time).
    assert all(orjson.loads(r.to_json())["record_id"] == expected for r in readings)


@pytest.mark.parametrize("where", ["sensor", "location"])
@pytest.mark.parametrize("big", [2**63, -(2**63) - 1, str(2**64 + 1), float(2**64)])
def test_an_id_beyond_64_bits_is_malformed_not_a_crash(where: str, big: Any) -> None:
    # Such a sensor id once reached the Flink job's split, whose JSON writer refused it:
    # the job failed on that record after every restart.
    rec = good()
    rec[where] = dict(rec[where], id=big)
    (rejection,) = R.split_record(rec)
    assert isinstance(rejection, R.Rejection)
    assert (rejection.reason, rejection.values) == (R.MALFORMED, 2)
    assert f"{where}.id=" in rejection.detail and "64 bits" in rejection.detail
    ok = dict(rec, **{where: dict(rec[where], id=2**63 - 1)})
    assert all(isinstance(o, R.Reading) for o in R.split_record(ok))


def _odd_records() -> list[Any]:
    """Records whose JSON is easy to get wrong, and records that are rejected."""
    out: list[Any] = []
    for city in ['Quote"d', "Back\\slash\\", 'x,"measure":"P1', "Zürich ☃", "", "tab\there"]:
        rec = good()
        rec["place"] = dict(rec["place"], city=city, country='Ger"many')
        out.append(rec)
    for values in (
        [("P1", "1e-5"), ("P2", "-0.0")],
        [("pressure", "101325"), ("temperature", "0.1")],
        [("P1", "1e3"), ("humidity", "99.99999999999999")],
        [("P1", "nan"), ("P2", "abc"), ("noise_LAeq", "45"), ("unknown_x", "1")],
    ):
        rec = good()
        rec["sensordatavalues"] = [{"value": v, "value_type": t} for t, v in values]
        out.append(rec)
    for record_id in (None, "1" * 30, 2**63 - 1):
        out.append(dict(good(), id=record_id))
    out.append(dict(good(), timestamp="2019-03-01T00:00:16+01:00"))
    out.append({k: v for k, v in good().items() if k != "place"})
    out.append(dict(good(), location=dict(good()["location"], indoor=1)))
    out.append(dict(good(), sensor={"id": "468", "sensor_type": {"name": "SDS011"}}))
    out += [dict(good(), timestamp="yesterday"), [1, 2], None]
    return out


def test_split_into_rows_is_split_into_readings(feed: list[dict[str, Any]]) -> None:
    """The Flink job's fast path gives what the domain's split gives, byte for byte:
    every reading's key, time, value and JSON; every rejection as it is."""

    def as_rows(outcomes: list[R.Reading | R.Rejection]) -> list[R.ReadingRow | R.Rejection]:
        return [
            R.ReadingRow(o.key, o.timestamp, o.value, o.to_json().decode())
            if isinstance(o, R.Reading)
            else o
            for o in outcomes
        ]

    records = [*feed, *_odd_records()]
    for attempt in ("cold caches", "warm caches"):
        for rec in records:
            assert R.split_record_rows(rec) == as_rows(R.split_record(rec)), (attempt, rec)
    readings = [o for rec in records for o in R.split_record_rows(rec)]
    assert sum(isinstance(o, R.ReadingRow) for o in readings) > 500
    assert sum(isinstance(o, R.Rejection) for o in readings) > 5
