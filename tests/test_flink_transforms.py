"""The Flink job's transformations and configuration as plain functions (no PyFlink)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from aircast import records as R
from aircast.measures import MEASURES
from aircast.settings import FlinkSettings, KafkaSettings, Settings
from flink import transforms as T
from flink.config import flink_configuration, kafka_properties, latest_checkpoint, sink_ddl

AT = 1_800_000_000
REPO_DIR = Path(__file__).resolve().parent.parent


def record(**changes: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "id": 7,
        "timestamp": "2024-01-01 00:00:10",
        "location": {"id": 220, "latitude": "48.74", "longitude": "9.31", "country": "DE"},
        "sensor": {"id": 468, "sensor_type": {"name": "BME280"}},
        "sensordatavalues": [
            {"value": "21.5", "value_type": "temperature"},
            {"value": "64.2", "value_type": "humidity"},
        ],
        "place": {"city": "Esslingen", "region": "BW", "country": "Germany", "country_code": "DE"},
    }
    rec.update(changes)
    return rec


def test_every_measure_keeps_its_own_key_and_value() -> None:
    # The original job filtered each measure with a lambda that captured the loop
    # variable, so every filter used the last value type and readings went to the wrong
    # measure. Here one record holds every measure with a distinct value: each reading
    # must come out under its own key, with its own value.
    values = {m.name: (m.low + m.high) / 2 + i * 0.001 for i, m in enumerate(MEASURES)}
    rec = record(sensordatavalues=[{"value": str(v), "value_type": k} for k, v in values.items()])
    outcomes = T.split_message(json.dumps(rec), AT)
    rows = dict(T.sink_row(o) for o in outcomes if isinstance(o, R.Reading))
    assert set(rows) == {f"468:{name}" for name in values}
    for key, value in rows.items():
        reading = R.Reading.from_json(value)
        assert key == f"468:{reading.measure}"
        assert reading.value == values[reading.measure]


def test_rejections_keep_payload_key_reason_and_source() -> None:
    rec = record(
        sensordatavalues=[
            {"value": "99", "value_type": "temperature"},
            {"value": "abc", "value_type": "humidity"},
            {"value": "1", "value_type": "radon"},
            {"value": "1002.5", "value_type": "pressure"},
        ]
    )
    text = json.dumps(rec)
    outcomes = T.split_message(text, AT, "aircast.raw")
    letters = [o for o in outcomes if isinstance(o, R.DeadLetter)]
    # pressure 1002.5 is hPa sent as Pa: far below the station range, so rejected too.
    assert [d.reason for d in letters] == [
        R.OUT_OF_RANGE,
        R.NOT_NUMERIC,
        R.UNKNOWN_TYPE,
        R.OUT_OF_RANGE,
    ]
    for d in letters:
        assert (d.stage, d.payload, d.key, d.values, d.at) == ("flink", text, "468", 1, AT)
        assert d.source == "aircast.raw"
        assert R.DeadLetter.from_json(d.to_json()) == d
    assert len(outcomes) == 4


def test_broken_messages_become_one_letter_for_all_their_values() -> None:
    (letter,) = T.split_message("{not json", AT)
    assert (letter.reason, letter.payload, letter.key, letter.values) == (
        R.MALFORMED,
        "{not json",
        None,
        1,
    )
    rec = record()
    del rec["timestamp"]
    (letter,) = T.split_message(json.dumps(rec), AT)
    assert (letter.reason, letter.key, letter.values) == (R.MISSING_FIELD, "468", 2)
    indoor = record()
    indoor["location"]["indoor"] = 1
    assert [o.reason for o in T.split_message(json.dumps(indoor), AT)] == [R.INDOOR, R.INDOOR]  # type: ignore[union-attr]


def test_values_are_conserved() -> None:
    rec = record()
    rec["sensordatavalues"].append({"value": "", "value_type": "P1"})
    outcomes = T.split_message(json.dumps(rec), AT)
    accounted = sum(1 if isinstance(o, R.Reading) else o.values for o in outcomes)
    assert accounted == R.value_count(rec) == 3


def reading(ts: int, value: float, lat: float = 48.74) -> R.Reading:
    return R.Reading(468, "SDS011", 220, lat, 9.31, "DE", "Germany", "Esslingen", "P1", value, ts)


def test_letters_for_duplicates_and_late_readings() -> None:
    r = reading(1_704_067_210, 12.0)
    dup = T.duplicate_letter(r, AT)
    late = T.late_letter(r, AT, 600)
    assert (dup.reason, dup.key, dup.values, R.Reading.from_json(dup.payload)) == (
        R.DUPLICATE,
        "468:P1",
        1,
        r,
    )
    # A late reading was delivered as a reading; only the aggregate misses it.
    assert (late.reason, late.key, late.values) == (R.LATE, "468:P1", 0)
    assert "600 s" in late.detail


def test_window_aggregate_uses_window_start_and_latest_location() -> None:
    start = 1_704_067_200
    (agg,) = T.window_aggregates(
        [
            T.carried(r)[2]
            for r in (reading(start + 300, 30.0, lat=48.9), reading(start + 10, 10.0))
        ],
        start,
    )
    assert (agg.window_start, agg.window_end, agg.count) == (start, start + 600, 2)
    assert (agg.mean, agg.min, agg.max, agg.latitude) == (20.0, 10.0, 30.0, 48.9)
    key, value = T.aggregate_row(agg)
    assert key == "468:P1" and R.Aggregate.from_json(value) == agg
    assert value == agg.to_json().decode()
    assert T.event_time_ms(reading(start, 1.0)) == start * 1000


def test_flink_configuration_from_settings(tmp_path: Path) -> None:
    settings = Settings(
        flink=FlinkSettings(
            checkpoint_dir=tmp_path / "ck",
            checkpoint_interval_ms=5000,
            restart_attempts=3,
            restart_delay_ms=750,
        )
    )
    conf = flink_configuration(settings, None)
    assert conf["execution.checkpointing.interval"] == "5000 ms"
    assert conf["execution.checkpointing.dir"] == (tmp_path / "ck").resolve().as_uri()
    assert conf["execution.checkpointing.externalized-checkpoint-retention"] == (
        "RETAIN_ON_CANCELLATION"
    )
    assert conf["execution.checkpointing.mode"] == "AT_LEAST_ONCE"
    assert conf["restart-strategy.fixed-delay.attempts"] == "3"
    assert conf["restart-strategy.fixed-delay.delay"] == "750 ms"
    assert "execution.state-recovery.path" not in conf
    eo = Settings(flink=FlinkSettings(delivery="exactly-once"))
    resumed = flink_configuration(eo, tmp_path / "j" / "chk-4")
    assert resumed["execution.checkpointing.mode"] == "EXACTLY_ONCE"
    assert resumed["execution.state-recovery.path"].endswith("/j/chk-4")
    # An earlier topology's checkpoint still gives its offsets; its old state is dropped.
    assert resumed["execution.state-recovery.ignore-unclaimed-state"] == "true"
    # Thread mode's embedded interpreter imports the job's packages from the project.
    assert conf["python.pythonpath"].split(os.pathsep)[0] == str(REPO_DIR)


def test_sink_ddl_is_keyed_and_transactional_only_under_exactly_once() -> None:
    alo = sink_ddl("t", "it's.topic", Settings(), "readings")
    assert "'topic' = 'it''s.topic'" in alo
    assert "'key.fields' = 'k'" in alo and "'sink.delivery-guarantee' = 'at-least-once'" in alo
    assert "transactional-id-prefix" not in alo
    eo = sink_ddl("t", "x", Settings(flink=FlinkSettings(delivery="exactly-once")), "readings")
    assert "'sink.transactional-id-prefix' = 'aircast-flink-readings'" in eo
    assert "'properties.transaction.timeout.ms' = '900000'" in eo


def test_kafka_properties_carry_sasl() -> None:
    kafka = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="u",
        sasl_password='p"w',  # type: ignore[arg-type]
    )
    props = kafka_properties(kafka)
    assert props["security.protocol"] == "SASL_SSL"
    assert props["sasl.jaas.config"] == (
        'org.apache.kafka.common.security.scram.ScramLoginModule required username="u" '
        'password="p\\"w";'
    )


def test_latest_checkpoint_is_the_newest_complete_one(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "none") is None
    old = tmp_path / "job-a" / "chk-9"
    new = tmp_path / "job-b" / "chk-2"
    partial = tmp_path / "job-b" / "chk-3"  # being written: no _metadata yet
    for d in (old, new, partial):
        d.mkdir(parents=True)
    assert latest_checkpoint(tmp_path) is None
    (old / "_metadata").write_bytes(b"x")
    (new / "_metadata").write_bytes(b"x")
    now = time.time()
    os.utime(old / "_metadata", (now - 60, now - 60))
    assert latest_checkpoint(tmp_path) == new


def test_reading_json_round_trips_through_the_domain() -> None:
    for r in (
        reading(1_704_067_210, 12.5),
        R.Reading(7, "BME280", 1, -33.9, 151.2, "AU", "Österreich", "Zürich", "P2", 1e-7, 5),
        R.Reading(7, "BME280", 1, 0.0, 1.0, "", "", 'a "q"\n', "humidity", 100.0, 5, 99),
    ):
        assert R.Reading.from_json(T.reading_json(r)) == r
        key, text, fields = T.carried(r)
        assert key == r.key and text == r.to_json().decode()
        assert R.Reading(*fields) == r


NO_WATERMARK = -(2**63)
LATENESS_MS = 600_000


def take(
    windows: T.DictStore[int, T.Entry],
    readings: list[R.Reading],
    watermark: int = NO_WATERMARK,
) -> tuple[list[tuple[int, Any]], tuple[int, ...]]:
    key, record_, event_ms = T.carried_record(readings)
    assert key == str(readings[0].sensor_id) and event_ms == readings[0].timestamp * 1000
    return T.take_record(windows, record_, watermark, LATENESS_MS, AT)


def kinds(out: list[tuple[int, Any]]) -> list[int]:
    return [kind for kind, _ in out]


def measure(r: R.Reading, name: str, value: float) -> R.Reading:
    return dataclasses.replace(r, measure=name, value=value)


def aggregates(out: list[tuple[int, Any]]) -> list[R.Aggregate]:
    assert {kind for kind, _ in out} <= {T.AGGREGATE}
    return [R.Aggregate.from_json(v) for _, (_, v) in out]


def test_one_record_is_deduplicated_per_measure() -> None:
    windows: T.DictStore[int, T.Entry] = T.DictStore()
    start = 1_704_067_200
    p1 = reading(start + 10, 12.0)
    p2 = measure(p1, "P2", 5.0)
    out, timers = take(windows, [p1])
    assert kinds(out) == [T.READING] and out[0][1] == T.sink_row(p1)
    assert timers == (T.fire_time_ms(start), T.cleanup_time_ms(start, LATENESS_MS))
    # Same time again: P1 is a duplicate, P2 (not taken at that time yet) is new.
    out, timers = take(windows, [p1, p2])
    assert kinds(out) == [T.LETTER, T.READING] and timers == ()
    letter = R.DeadLetter.from_json(out[0][1][1])
    assert (letter.reason, letter.key, letter.values) == (R.DUPLICATE, "468:P1", 1)
    assert out[1][1] == T.sink_row(p2)
    # Both again: two letters, nothing delivered, the window unchanged.
    out, _ = take(windows, [p1, p2])
    assert kinds(out) == [T.LETTER, T.LETTER]
    seen, contents = windows[start]
    assert seen == {p1.timestamp: ("468:P1", "468:P2")} and contents is not None
    assert len(contents) == 2
    # The window closes: its readings go, its dedupe memory stays.
    T.on_timer(windows, T.cleanup_time_ms(start, LATENESS_MS), LATENESS_MS)
    assert windows[start] == (seen, None)
    out, _ = take(windows, [p1])
    assert kinds(out) == [T.LETTER]


def test_windows_follow_flinks_event_time_rules() -> None:
    # Tumbling 10-minute windows, allowed lateness 600 s, as the job runs them.
    windows: T.DictStore[int, T.Entry] = T.DictStore()
    start = 1_704_067_200
    w0_fire = (start + 600) * 1000 - 1
    w0_cleanup = w0_fire + LATENESS_MS
    assert T.start_fired_at(w0_fire) == start and T.start_fired_at(w0_fire - 1) is None

    assert take(windows, [reading(start + 300, 30.0)])[1] == (w0_fire, w0_cleanup)
    assert take(windows, [reading(start + 10, 10.0)])[1] == ()
    other = measure(reading(start + 20, 0.0), "P2", 7.0)
    assert take(windows, [other])[1] == ()
    # Window 1: its firing time is window 0's cleanup time.
    assert take(windows, [reading(start + 600, 5.0)])[1] == (w0_cleanup, w0_cleanup + LATENESS_MS)
    assert not T.fires_now(start, w0_fire - 1) and T.fires_now(start, w0_fire)

    # Window 0 fires: one aggregate per measure; P1's in time order (latest last).
    fired = aggregates(T.on_timer(windows, w0_fire, LATENESS_MS))
    assert [(a.key, a.count, a.mean, a.min, a.max) for a in fired] == [
        ("468:P1", 2, 20.0, 10, 30),
        ("468:P2", 1, 7.0, 7, 7),
    ]
    assert fired[0] == R.Aggregate.of(
        [reading(start + 10, 10.0), reading(start + 300, 30.0)], start
    )
    # Late but allowed: delivered, and P1's aggregate fires again at once with all three.
    out, timers = take(windows, [reading(start + 40, 50.0)], w0_fire + 1000)
    assert kinds(out) == [T.READING, T.AGGREGATE] and timers == ()
    again = R.Aggregate.from_json(out[1][1][1])
    assert (again.key, again.window_start, again.count) == ("468:P1", start, 3)
    # One timer fires window 1 and closes window 0.
    fired = aggregates(T.on_timer(windows, w0_cleanup, LATENESS_MS))
    assert [a.window_start for a in fired] == [start + 600]
    assert windows[start][1] is None and windows[start + 600][1] is not None
    # Window 0 is closed for good: a reading for it is delivered but late for the
    # aggregate (values=0); window 1 still takes one and fires again at once.
    out, _ = take(windows, [reading(start + 30, 1.0)], w0_cleanup)
    assert kinds(out) == [T.READING, T.LETTER]
    late = R.DeadLetter.from_json(out[1][1][1])
    assert (late.reason, late.values) == (R.LATE, 0)
    out, _ = take(windows, [reading(start + 601, 1.0)], w0_cleanup)
    assert kinds(out) == [T.READING, T.AGGREGATE]
    # A closed window stays closed even if the watermark starts over (a restart).
    out, timers = take(windows, [reading(start + 50, 2.0)])
    assert kinds(out) == [T.READING, T.LETTER] and timers == ()
    # A first reading for a window already due fires it at once; only the cleanup waits.
    out, timers = take(windows, [reading(start + 1200, 3.0)], w0_cleanup + LATENESS_MS)
    assert kinds(out) == [T.READING, T.AGGREGATE]
    assert timers == (T.cleanup_time_ms(start + 1200, LATENESS_MS),)
    # Without allowed lateness a window fires and closes on one timer.
    assert aggregates(T.on_timer(windows, T.fire_time_ms(start + 1200), 0))
    assert windows[start + 1200][1] is None
