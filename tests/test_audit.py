"""`aircast audit` against the real broker and InfluxDB: the test plays the processing
and collection stages with the domain's own functions, then checks that the audit finds
a balanced span balanced, and finds each kind of imbalance when one is made: a lost
reading, a reading stored under two series, a missing dead letter. The CLI prints its
table and a JSON last line, and exits 1 when the span is not conserved."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from aircast import tuning
from aircast.audit import outcomes_of_message, run_audit
from aircast.deadletters import DeadLetters
from aircast.influx import InfluxV1
from aircast.kafka import ensure_topics, producer
from aircast.localhost import free_port
from aircast.records import DUPLICATE, MALFORMED, Reading, Rejection
from aircast.settings import Settings
from aircast.simulator import Faults, Network

from .conftest import REPO, unique


def fresh(settings: Settings) -> Settings:
    kafka = settings.kafka.model_copy(
        update={
            "raw_topic": unique("raw"),
            "readings_topic": unique("readings"),
            "dead_letter_topic": unique("dlq"),
            "partitions": 2,
        }
    )
    influx = settings.influx.model_copy(update={"raw_database": unique("audit_raw")})
    out = settings.model_copy(update={"kafka": kafka, "influx": influx})
    ensure_topics(kafka, [kafka.raw_topic, kafka.readings_topic, kafka.dead_letter_topic])
    with InfluxV1(influx) as client:
        client.create_database(influx.raw_database, influx.raw_retention)
    return out


def play_pipeline(settings: Settings, messages: list[bytes]) -> list[Reading]:
    """Raw messages in; readings to the readings topic and InfluxDB, rejections to the
    dead-letter topic, as the Flink job and the collector do. Returns the readings."""
    k = settings.kafka
    p = producer(k)
    letters = DeadLetters(p, k.dead_letter_topic, "flink")
    seen: set[tuple[str, int, int]] = set()
    readings: list[Reading] = []
    for message in messages:
        p.send(k.raw_topic, value=message)
        for outcome in outcomes_of_message(message):
            if isinstance(outcome, Rejection):
                letters.add(outcome.reason, outcome.detail, message, values=outcome.values)
                continue
            rid = (outcome.measure, outcome.sensor_id, outcome.timestamp)
            if rid in seen:
                letters.add(DUPLICATE, "already taken in", outcome.to_json(), key=outcome.key)
                continue
            seen.add(rid)
            readings.append(outcome)
            p.send(k.readings_topic, key=outcome.key.encode(), value=outcome.to_json())
    p.flush()
    p.close()
    with InfluxV1(settings.influx) as influx:
        influx.write([r.line() for r in readings], settings.influx.raw_database, precision="s")
    return readings


def raw_messages() -> list[bytes]:
    net = Network(12, seed=9, faults=Faults(not_numeric=0.1, spike=0.1, duplicate=0.0))
    now = int(time.time())
    records = net.snapshot(now - now % 300)
    messages = [json.dumps(r).encode() for r in records]
    # The same record twice, one with a rejected value too: its readings are duplicates,
    # its rejected value is lettered again with an identical letter (counted once).
    twice = next(
        m for m in messages if {type(o) for o in outcomes_of_message(m)} == {Reading, Rejection}
    )
    messages.append(twice)
    messages.append(b"{not json")
    return messages


def delete_point(settings: Settings, reading: Reading) -> None:
    """The reading's point gone from InfluxDB, as if its write had been lost."""
    with InfluxV1(settings.influx) as influx:
        influx.query(
            f"DELETE FROM \"{reading.measure}\" WHERE sensor_id = '{reading.sensor_id}' "
            f"AND time = {reading.timestamp}s",
            settings.influx.raw_database,
        )


@pytest.fixture()
def played(stack_settings: Settings) -> tuple[Settings, float, list[Reading]]:
    settings = fresh(stack_settings)
    since = time.time() - 1
    readings = play_pipeline(settings, raw_messages())
    return settings, since, readings


def test_a_balanced_span_is_conserved(played: tuple[Settings, float, list[Reading]]) -> None:
    settings, since, readings = played
    audit = run_audit(settings, since)
    s = audit.summary()
    assert audit.ok, s
    assert s["readings_expected"] == len(readings) == s["in_influxdb"]
    assert s["readings_topic_distinct"] == len(readings)
    assert audit.raw_records == audit.raw_distinct + 1  # one record sent twice
    rejected = sum(audit.rejected_expected.values())
    assert s["values_in"] == len(readings) + rejected
    assert audit.rejected_expected[MALFORMED] == 1
    assert audit.rejected_expected[DUPLICATE] > 0
    assert audit.letter_replays > 0  # the repeated record's rejected value, lettered twice
    assert audit.lettered["flink"] == audit.rejected_expected


def test_a_lost_reading_is_found(played: tuple[Settings, float, list[Reading]]) -> None:
    settings, since, readings = played
    gone = readings[3]
    delete_point(settings, gone)
    audit = run_audit(settings, since)
    assert not audit.ok
    assert audit.lost == [(gone.measure, gone.sensor_id, gone.timestamp)]


def test_counts_read_a_page_of_sensors_at_a_time(
    played: tuple[Settings, float, list[Reading]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With pages of about 5 series (sensor_id mod 10: ten pages here), the audit
    balances as with one query, and still finds a reading gone."""
    settings, since, readings = played
    monkeypatch.setattr(tuning, "AUDIT_SERIES_PER_QUERY", 5)
    asked: list[str] = []
    query = InfluxV1.query

    def recorded(self: InfluxV1, q: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        asked.append(q)
        return query(self, q, *args, **kwargs)

    monkeypatch.setattr(InfluxV1, "query", recorded)
    audit = run_audit(settings, since)
    assert audit.ok, audit.summary()
    assert audit.summary()["in_influxdb"] == len(readings)
    counts = [q for q in asked if "count(" in q]
    assert any("sensor_id" in q and "=~" in q for q in counts), counts
    assert len(counts) >= 10, counts

    gone = readings[5]
    delete_point(settings, gone)
    audit = run_audit(settings, since)
    assert audit.lost == [(gone.measure, gone.sensor_id, gone.timestamp)]


def test_a_lost_reading_behind_another_point_is_found(
    played: tuple[Settings, float, list[Reading]],
) -> None:
    """The per-series count stays right when a reading is lost and a point of no
    record comes in at another time of the same sensor: the sums tell them apart."""
    settings, since, readings = played
    gone = readings[3]
    stray = replace(gone, timestamp=gone.timestamp + 1, value=gone.value + 1.5)
    delete_point(settings, gone)
    with InfluxV1(settings.influx) as influx:
        influx.write([stray.line()], settings.influx.raw_database, precision="s")
    audit = run_audit(settings, since)
    assert not audit.ok
    assert audit.lost == [(gone.measure, gone.sensor_id, gone.timestamp)]


def test_a_reading_under_two_series_is_written_twice(
    played: tuple[Settings, float, list[Reading]],
) -> None:
    settings, since, readings = played
    twice = readings[5]
    moved = replace(twice, city="Elsewhere")  # same reading, another tag set: a new series
    with InfluxV1(settings.influx) as influx:
        influx.write([moved.line()], settings.influx.raw_database, precision="s")
    audit = run_audit(settings, since)
    assert not audit.ok
    assert audit.doubled == {(twice.measure, twice.sensor_id, twice.timestamp): 2}


def test_a_missing_dead_letter_and_the_cli(stack_settings: Settings, tmp_path: Path) -> None:
    settings = fresh(stack_settings)
    since = time.time() - 1
    messages = raw_messages()
    play_pipeline(settings, messages[:-1])  # every letter written
    # The malformed message reaches the raw topic but its letter never comes.
    p = producer(settings.kafka)
    p.send(settings.kafka.raw_topic, value=messages[-1])
    p.flush()
    p.close()
    audit = run_audit(settings, since)
    assert audit.rejection_differences == {MALFORMED: (1, 0)}

    config = tmp_path / "audit.yaml"
    config.write_text(
        json.dumps(
            {
                "kafka": settings.kafka.model_dump(mode="json"),
                "influx": {
                    **settings.influx.model_dump(mode="json"),
                    "password": settings.influx.password.get_secret_value()
                    if settings.influx.password
                    else None,
                },
            }
        )
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "aircast_cli",
            "--config",
            str(config),
            "audit",
            "--since",
            str(since),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert last["ok"] is False and last["rejection_differences"] == {MALFORMED: [1, 0]}
    assert "NOT conserved" in done.stderr


def test_the_cli_says_when_the_broker_is_away(stack_settings: Settings, tmp_path: Path) -> None:
    """No broker: a clear error and exit 2, not a traceback, and never "conserved"."""
    config = tmp_path / "audit.yaml"
    away = {
        **stack_settings.kafka.model_dump(mode="json"),
        "bootstrap_servers": f"127.0.0.1:{free_port()}",
    }
    config.write_text(json.dumps({"kafka": away}))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "aircast_cli",
            "--config",
            str(config),
            "audit",
            "--since",
            "5m",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "error:" in done.stderr and "could not be read" in done.stderr
    assert "Traceback" not in done.stderr and "conserved" not in done.stderr
