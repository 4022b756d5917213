"""The Flink job's transformations and configuration as plain functions (no PyFlink)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

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
    # What the job's split emits: (event ms, key, JSON, value) per reading.
    outcomes = T.split_message(json.dumps(rec), AT)
    rows = [T.job_row(o) for o in outcomes if isinstance(o, R.ReadingRow)]
    assert {key for _, key, _, _ in rows} == {f"468:{name}" for name in values}
    for ms, key, text, value in rows:
        reading = R.Reading.from_json(text)
        assert key == f"468:{reading.measure}"
        assert reading.value == value == values[reading.measure]
        assert ms == reading.timestamp * 1000


def test_the_jobs_rows_are_the_domains_readings() -> None:
    """The job's split (rows made without Reading objects) gives, per message, exactly
    the domain's readings as rows, and a letter for each of its rejections."""
    sample = json.loads(Settings().data.feed_sample.read_text())  # real feed records
    for rec in [*sample, record(), record(sensordatavalues=[{"value": "x", "value_type": "P1"}])]:
        out = T.split_message(json.dumps(rec), AT, "aircast.raw")
        domain = R.split_record(rec)
        assert [T.job_row(o) for o in out if isinstance(o, R.ReadingRow)] == [
            (r.timestamp * 1000, r.key, r.to_json().decode(), r.value)
            for r in domain
            if isinstance(r, R.Reading)
        ]
        assert [(d.reason, d.detail, d.values) for d in out if isinstance(d, R.DeadLetter)] == [
            (r.reason, r.detail, r.values) for r in domain if isinstance(r, R.Rejection)
        ]


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
    accounted = sum(1 if isinstance(o, R.ReadingRow) else o.values for o in outcomes)
    assert accounted == R.value_count(rec) == 3


def reading(ts: int, value: float, lat: float = 48.74) -> R.Reading:
    return R.Reading(468, "SDS011", 220, lat, 9.31, "DE", "Germany", "Esslingen", "P1", value, ts)


def test_the_jobs_sql_json_names_every_field_of_the_domains_records() -> None:
    # Generated from the dataclasses: a field added to Aggregate or DeadLetter must get
    # an expression (or come from the reading) or the job refuses to start.
    marker, figures = T.aggregate_layout()
    # The sensor and place: the latest reading's JSON text up to its "value" key; then
    # every Aggregate field the Reading does not have, in order.
    assert marker == ',"value":'
    from_reading = {f.name for f in dataclasses.fields(R.Reading)}
    assert figures == [
        f.name for f in dataclasses.fields(R.Aggregate) if f.name not in from_reading
    ]
    assert figures == ["window_start", "window_end", "mean", "min", "max", "count"]
    for reason, values in ((R.DUPLICATE, 1), (R.LATE, 0)):
        letter = T.letter_json_sql(reason, "k", "v", "ts", 600)
        for f in dataclasses.fields(R.DeadLetter):
            assert f"KEY '{f.name}' VALUE " in letter
        assert f"KEY 'reason' VALUE '{reason}'" in letter
        assert f"KEY 'values' VALUE {values}," in letter
    assert "(allowed lateness 600 s)" in T.letter_json_sql(R.LATE, "k", "v", "ts", 600)
    with pytest.raises(ValueError, match="out_of_range"):
        T.letter_json_sql(R.OUT_OF_RANGE, "k", "v", "ts", 600)


@pytest.mark.parametrize(
    "city", ["Bad Homburg, v.d.H", 'a,"value":1,"x', "São Paulo", 'back\\slash"', ""]
)
def test_an_aggregate_cut_from_a_readings_json_is_that_aggregate(city: str) -> None:
    """What the job's Windows does to the latest reading's JSON text (cut before the
    layout's marker, the figures appended in its order), done here in Python on the JSON
    the split writes: the result is the Aggregate, whatever the place's text holds."""
    r = dataclasses.replace(reading(1555424572, 12.5), city=city, country=city)
    text = r.to_json().decode()  # the reading's JSON, as the split writes it
    marker, names = T.aggregate_layout()
    head = text[: text.index(marker)]
    figures = {"window_start": 1555424400, "window_end": 1555425000, "mean": 11.25}
    figures |= {"min": 10.0, "max": 12.5, "count": 2}
    cut = head + "".join(f',"{k}":{figures[k]}' for k in names) + "}"
    agg = R.Aggregate.from_json(cut)
    assert agg == R.Aggregate.of([dataclasses.replace(r, value=10.0), r], 1555424400)


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
        assert R.Reading.from_json(r.to_json().decode()) == r
