"""Alert rules through the API's handlers, the outbox, webhooks that never take an
alert, forecast rules and the pipeline's alerts job, against the real Redis and Kafka
(the evaluator runs in this process here; tests/test_alerts_e2e.py runs it on Ray)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from fastapi import HTTPException

from actors import alerts as runtime
from actors import pipeline
from aircast import tuning
from aircast.alert_store import AlertStore, OutboxEntry
from aircast.alerts import WEBHOOK_FAILED, WEBHOOK_REJECTED, Engine, Episode, Rule
from aircast.cache import redis_client
from aircast.forecasts import cache_key
from aircast.records import AGGREGATE_WINDOW_S, Aggregate, DeadLetter, window_start
from aircast.settings import Settings
from serve import alert_routes

from .helpers import read_topic
from .test_alerts_e2e import Receiver, fresh, produce

W = AGGREGATE_WINDOW_S
RULE = {
    "name": "PM2.5 above 25",
    "measure": "P2",
    "threshold": 25.0,
    "duration_s": 600,
    "sensors": [7],
}


def store_of(settings: Settings) -> AlertStore:
    return AlertStore(redis_client(settings.redis), settings.redis)


def test_rules_are_created_listed_read_and_deleted(stack_settings: Settings) -> None:
    settings = fresh(stack_settings, None)
    store = store_of(settings)
    created = asyncio.run(alert_routes.create_rule(store, RULE))
    assert isinstance(created, Rule) and created.sensors == (7,) and created.kind == "observed"
    area = {**RULE, "sensors": None, "bbox": {"south": 47, "west": 8, "north": 49, "east": 10}}
    other = asyncio.run(alert_routes.create_rule(store, {**area, "forecast_horizon_s": 21600}))
    listed = asyncio.run(alert_routes.list_rules(store))
    assert listed.count == 2 and {r.id for r in listed.rules} == {created.id, other.id}
    assert asyncio.run(alert_routes.get_rule(store, other.id)) == other
    assert other.kind == "forecast" and other.bbox is not None
    store.save({(created.id, 7): Episode(firing=True, since=1, last_end=600)}, [])
    deleted = asyncio.run(alert_routes.delete_rule(store, created.id))
    assert deleted.id == created.id and deleted.deleted
    assert store.episodes(created.id) == {}  # its episodes went with it
    for call in (alert_routes.get_rule, alert_routes.delete_rule):
        with pytest.raises(HTTPException) as info:
            asyncio.run(call(store, created.id))
        assert info.value.status_code == 404 and created.id in str(info.value.detail)
    assert asyncio.run(alert_routes.list_rules(store)).count == 1


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"measure": "smoke"}, "unknown measure 'smoke'"),
        ({"threshold": 2000}, "the measure's valid range"),
        ({"duration_s": 60}, "multiple of 600 s"),
        ({"sensors": None}, "exactly one of bbox"),
    ],
)
def test_a_bad_body_is_a_422_with_its_reason(
    stack_settings: Settings, over: dict[str, Any], reason: str
) -> None:
    store = store_of(fresh(stack_settings, None))
    with pytest.raises(HTTPException) as info:
        asyncio.run(alert_routes.create_rule(store, {**RULE, **over}))
    assert info.value.status_code == 422
    assert reason in json.dumps(info.value.detail)
    assert store.count_rules() == 0


def test_the_rule_count_is_bounded(stack_settings: Settings) -> None:
    store = store_of(fresh(stack_settings, None))
    pipe = store.redis.pipeline()
    for i in range(tuning.ALERT_MAX_RULES):
        pipe.hset(store.rules_key, f"{i:032x}", "{}")
    pipe.execute()
    with pytest.raises(HTTPException) as info:
        asyncio.run(alert_routes.create_rule(store, RULE))
    assert info.value.status_code == 409
    # Unreadable rules (a schema change) are left out of the listing, not fatal to it.
    assert asyncio.run(alert_routes.list_rules(store)).count == 0


def test_the_outbox_keeps_alerts_in_order_until_delivered(stack_settings: Settings) -> None:
    store = store_of(fresh(stack_settings, None))
    rule = asyncio.run(alert_routes.create_rule(store, RULE))
    engine = Engine()
    engine.load(rule, {})
    now = time.time()
    start = window_start(int(now)) - 3 * W
    alerts = []
    for i, mean in enumerate((40.0, 10.0)):
        alerts += engine.aggregate(_aggregate(start + i * W, mean), now)
    store.save(engine.take_changes(), [OutboxEntry(a, None) for a in reversed(alerts)])
    pending = store.pending()
    assert [e.alert.status for e in pending] == ["fired", "resolved"]
    produced = store.mark_produced(pending[0])
    assert store.pending()[0] == produced and produced.produced
    store.delivered(produced.alert.id)
    assert [e.alert.status for e in store.pending()] == ["resolved"]
    assert store.episodes(rule.id) == {7: Episode(last_end=start + 2 * W)}


def _aggregate(start: int, mean: float, sensor: int = 7) -> Aggregate:
    return Aggregate(
        sensor, "SDS011", 1, 48.7, 9.1, "DE", "Germany", "Stuttgart", "P2",
        start, start + W, mean, mean, mean, 5,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("answer", "reason", "tries"), [(500, WEBHOOK_FAILED, 2), (404, WEBHOOK_REJECTED, 1)]
)
def test_a_webhook_that_never_takes_it_gets_a_dead_letter(
    stack_settings: Settings, answer: int, reason: str, tries: int
) -> None:
    with Receiver(always=answer) as receiver:
        settings = fresh(stack_settings, receiver.url, webhook_retries=1)
        store = store_of(settings)
        rule = asyncio.run(alert_routes.create_rule(store, RULE))
        start = window_start(int(time.time())) - 2 * W
        produce(settings, [_aggregate(start, 80.0)])
        evaluator = runtime.Evaluator(settings)
        try:
            stats = evaluator.run(until_idle_s=2.0)
        finally:
            evaluator.close()
        assert len(receiver.requests) == tries
    assert (stats.fired, stats.produced, stats.webhook_dead) == (1, 1, 1)
    assert store.pending() == []
    letters = read_topic(settings.kafka, settings.kafka.dead_letter_topic, expect=1, timeout_s=20)
    assert len(letters) == 1
    letter = DeadLetter.from_json(letters[0][1])
    assert (letter.stage, letter.reason) == ("alerts", reason)
    assert f"HTTP {answer}" in letter.detail and "token" not in letter.detail  # query cut
    assert json.loads(letter.payload)["rule_id"] == rule.id
    assert len(read_topic(settings.kafka, settings.alerts.topic, expect=1, timeout_s=20)) == 1
    # Committed: a new evaluator in the same group has nothing left to read.
    again = runtime.Evaluator(settings)
    try:
        assert again.run(until_idle_s=1.0).aggregates == 0
    finally:
        again.close()


def test_forecast_rules_fire_on_the_served_forecasts(stack_settings: Settings) -> None:
    with Receiver() as receiver:
        settings = fresh(stack_settings, receiver.url, forecast_check_s=0.2)
        store = store_of(settings)
        rule = asyncio.run(
            alert_routes.create_rule(
                store, {**RULE, "forecast_horizon_s": 6 * 3600, "name": "PM2.5 above 25 in 6 h"}
            )
        )
        based_on = window_start(int(time.time())) - W
        served: dict[str, Any] = {
            "sensor_id": 7,
            "measure": "P2",
            "issued_at": based_on + W,
            "based_on": based_on,
            "points": [
                {"horizon_steps": h, "horizon": label, "time": based_on + h * W, "value": v}
                for h, label, v in ((1, "10m", 12.0), (6, "1h", 18.0), (36, "6h", 31.5))
            ],
        }
        key = cache_key(settings.redis, "P2", 7)
        store.redis.set(key, json.dumps(served), ex=600)
        evaluator = runtime.Evaluator(settings)
        try:
            evaluator.refresh_rules()
            time.sleep(0.3)
            evaluator.poll_once(timeout_s=0.1)
            time.sleep(0.3)
            evaluator.poll_once(timeout_s=0.1)  # the same forecast again: nothing new
            assert len(receiver.accepted()) == 1
            ok = {**served, "points": [{**p, "value": 10.0} for p in served["points"]]}
            store.redis.set(
                key, json.dumps({**ok, "based_on": based_on + W, "issued_at": based_on + 2 * W})
            )
            time.sleep(0.3)
            evaluator.poll_once(timeout_s=0.1)
        finally:
            evaluator.close()
    fired, resolved = receiver.accepted()
    assert (fired["status"], fired["kind"], fired["rule_id"]) == ("fired", "forecast", rule.id)
    assert fired["value"] == 31.5 and fired["forecast_time"] == based_on + 36 * W
    assert resolved["status"] == "resolved" and resolved["at"] == based_on + 2 * W


def test_the_pipeline_submits_the_alerts_job_when_enabled(stack_settings: Settings) -> None:
    on = pipeline.prepare(stack_settings, "simulator")
    assert on.entrypoints["alerts"].endswith("-m actors.alerts")
    assert set(on.entrypoints) == {"ingest", "collect", "alerts"}
    disabled = stack_settings.model_copy(
        update={"alerts": stack_settings.alerts.model_copy(update={"enabled": False})}
    )
    assert set(pipeline.prepare(disabled, "simulator").entrypoints) == {"ingest", "collect"}


def test_a_restart_delivers_what_the_outbox_still_holds(stack_settings: Settings) -> None:
    """Killed after saving alerts but before delivering them: the next evaluator
    delivers them first; one Kafka already holds goes to the webhook only."""
    with Receiver() as receiver:
        settings = fresh(stack_settings, receiver.url)
        store = store_of(settings)
        rule = asyncio.run(alert_routes.create_rule(store, {**RULE, "duration_s": 600}))
        engine = Engine()
        engine.load(rule, {})
        start = window_start(int(time.time())) - 3 * W
        now = time.time()
        fired = engine.aggregate(_aggregate(start, 40.0), now)
        resolved = engine.aggregate(_aggregate(start + W, 4.0), now)
        entries = [OutboxEntry(fired[0], receiver.url, produced=True)]
        entries.append(OutboxEntry(resolved[0], receiver.url))
        store.save(engine.take_changes(), entries)
        evaluator = runtime.Evaluator(settings)
        try:
            stats = evaluator.run(until_idle_s=1.0)
        finally:
            evaluator.close()
    assert [b["status"] for b in receiver.accepted()] == ["fired", "resolved"]
    assert stats.produced == 1 and store.pending() == []
    on_topic = read_topic(settings.kafka, settings.alerts.topic, expect=1, timeout_s=20)
    assert [json.loads(v)["status"] for _, v in on_topic] == ["resolved"]
