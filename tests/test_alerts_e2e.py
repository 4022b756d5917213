"""Alerts end to end against the real servers: the simulator drives one sensor's PM2.5
over a rule's threshold for longer than its duration, then back; the evaluator runs
as a Ray actor reading the aggregates from Kafka; a real HTTP receiver on 127.0.0.1
takes the webhooks.

The aggregates are the simulator's readings (``split_record``) averaged per 10-minute
window (``Aggregate.of``), the same domain code the Flink job's windows follow, and
are produced to a real Kafka topic directly: starting the Flink job (its JVM) would
take longer than this whole test. Expected: exactly one "fired" and exactly one
"resolved", both on the alerts topic and at the webhook; the webhook's first two
answers are 503, so the fired alert reaches it on the third attempt; the evaluator is
killed (SIGKILL) mid-episode, Ray restarts it, it reads the episode's aggregates again
and more above the threshold, and fires nothing more."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

from actors import alerts as runtime
from aircast.alert_store import AlertStore
from aircast.cache import redis_client
from aircast.kafka import admin, ensure_topics, producer
from aircast.records import AGGREGATE_WINDOW_S, Aggregate, Reading, split_record, window_start
from aircast.settings import Settings
from aircast.simulator import NO_FAULTS, Excursion, Network
from serve import alert_routes

from .conftest import unique
from .helpers import read_topic

W = AGGREGATE_WINDOW_S


class Receiver:
    """A webhook receiver on 127.0.0.1: answers 503 to its first ``fail_first``
    requests (or to all, or 400 to all), 200 after; keeps every request."""

    def __init__(self, fail_first: int = 0, always: int | None = None) -> None:
        self.fail_first = fail_first
        self.always = always
        self.requests: list[tuple[int, dict[str, Any], str]] = []  # (answered, body, id header)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    n = len(receiver.requests)
                    status = receiver.always or (503 if n < receiver.fail_first else 200)
                    receiver.requests.append((status, body, self.headers["X-Aircast-Alert-Id"]))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=secret"

    def accepted(self) -> list[dict[str, Any]]:
        with self.lock:
            return [body for status, body, _ in self.requests if status == 200]

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def fresh(settings: Settings, webhook_url: str | None, **alerts: Any) -> Settings:
    kafka = settings.kafka.model_copy(
        update={
            "aggregates_topic": unique("aggs"),
            "dead_letter_topic": unique("dlq"),
            "partitions": 2,
        }
    )
    redis = settings.redis.model_copy(update={"key_prefix": unique("alerts") + ":"})
    section = settings.alerts.model_copy(
        update={
            "topic": unique("alerts"),
            "group_id": unique("alerts"),
            "webhook_url": webhook_url,
            "webhook_retries": 3,
            "webhook_timeout_s": 5.0,
            **alerts,
        }
    )
    out = settings.model_copy(update={"kafka": kafka, "redis": redis, "alerts": section})
    ensure_topics(out.kafka, runtime.topics(out))
    return out


def simulated_aggregates(net: Network, first: int, windows: range) -> list[Aggregate]:
    """Every sensor's 10-minute aggregates of the simulated network, window by window."""
    out: list[Aggregate] = []
    for w in windows:
        start = first + w * W
        per_key: dict[str, list[Reading]] = {}
        for sensor in net.sensors:
            for t in net.reading_times(sensor, start, start + W):
                for r in split_record(net.record(sensor, t)):
                    if isinstance(r, Reading):
                        per_key.setdefault(r.key, []).append(r)
        out.extend(Aggregate.of(rs, start) for rs in per_key.values())
    return out


def produce(settings: Settings, aggregates: list[Aggregate]) -> None:
    p = producer(settings.kafka)
    for a in aggregates:
        p.send(settings.kafka.aggregates_topic, key=a.key.encode(), value=a.to_json())
    p.flush()
    p.close()


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def pid_when_back(actor: Any, timeout_s: float = 60.0) -> int:
    """The actor's pid once Ray has restarted it (it is unavailable meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return int(ray.get(actor.pid.remote(), timeout=10))
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    with Receiver(fail_first=2) as r:
        yield r


def test_one_alert_then_one_resolution_across_a_restart(
    ray_session: Settings, receiver: Receiver
) -> None:
    settings = fresh(ray_session, receiver.url)
    first = window_start(int(time.time())) - 4 * 3600  # 16 windows, all in the past
    net0 = Network(30, seed=11, faults=NO_FAULTS)
    pm = next(s for s in net0.sensors if "P2" in s.value_types)
    # PM2.5 at 60 µg/m³ in windows 3..11 (9 windows, 90 min), about 10 otherwise.
    excursion = Excursion(pm.sensor_id, "P2", first + 3 * W, first + 12 * W, 60.0)
    net = Network(30, seed=11, faults=NO_FAULTS, excursions=(excursion,))
    store = AlertStore(redis_client(settings.redis), settings.redis)
    body = {"name": "PM2.5 above 25 for 30 min", "measure": "P2", "threshold": 25.0}
    rule = asyncio.run(
        alert_routes.create_rule(store, {**body, "duration_s": 1800, "sensors": [pm.sensor_id]})
    )
    # Over the whole network and far above anything simulated: never fires.
    asyncio.run(
        alert_routes.create_rule(
            store,
            {
                **body,
                "threshold": 500.0,
                "bbox": {"south": 30, "west": -20, "north": 70, "east": 40},
            },
        )
    )
    phase_a = simulated_aggregates(net, first, range(0, 7))  # fires at the end of window 5
    phase_b = simulated_aggregates(net, first, range(7, 16))  # 5 more windows above, then back
    produce(settings, phase_a)

    actor = runtime.RemoteEvaluator.remote(settings)
    running = actor.run.remote(None)
    wait_for("the fired alert at the webhook", lambda: len(receiver.accepted()) == 1)
    wait_for("the outbox to drain", lambda: store.pending() == [])
    fired = receiver.accepted()[0]
    assert (fired["status"], fired["sensor_id"], fired["rule_id"]) == (
        "fired",
        pm.sensor_id,
        rule.id,
    )
    assert fired["since"] == first + 3 * W and fired["at"] == first + 6 * W
    assert 55 < fired["value"] < 65
    # 503, 503, then 200: the same alert three times, retried with backoff.
    assert [(s, h) for s, _, h in receiver.requests] == [
        (503, fired["id"]),
        (503, fired["id"]),
        (200, fired["id"]),
    ]

    # Killed mid-episode; Ray restarts it (its state: Redis and the committed offsets).
    pid = ray.get(actor.pid.remote())
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(running, timeout=60)
    assert pid_when_back(actor) != pid
    running = actor.run.remote(None)
    # A replay of what was read before the kill, then the rest of the episode.
    produce(settings, phase_a + phase_b)
    wait_for(
        "the resolution at the webhook",
        lambda: any(b["status"] == "resolved" for b in receiver.accepted()),
    )
    wait_for("the outbox to drain", lambda: store.pending() == [])
    time.sleep(2.0)  # anything more would come now
    ray.get(actor.stop.remote())
    stats = ray.get(running, timeout=60)
    assert stats["aggregates"] == len(phase_a) + len(phase_b)
    assert stats["undecodable"] == 0 and stats["webhook_dead"] == 0

    assert [b["status"] for b in receiver.accepted()] == ["fired", "resolved"]
    resolved = receiver.accepted()[1]
    assert resolved["since"] == fired["since"]
    assert resolved["at"] == first + 13 * W and resolved["value"] < 25 < resolved["peak"]
    assert [s for s, _, _ in receiver.requests] == [503, 503, 200, 200]
    on_topic = read_topic(settings.kafka, settings.alerts.topic, expect=2, timeout_s=30)
    assert [json.loads(v) for _, v in on_topic] == [fired, resolved]
    assert {k for k, _ in on_topic} == {f"{rule.id}:{pm.sensor_id}".encode()}
    assert read_topic(settings.kafka, settings.kafka.dead_letter_topic, timeout_s=5) == []
    episode = store.episodes(rule.id)[pm.sensor_id]
    assert not episode.firing and episode.last_end == first + 16 * W


def test_the_alerts_job_entrypoint_runs_and_creates_its_topic(
    ray_session: Settings, tmp_path: Path
) -> None:
    """``python -m actors.alerts`` (what ``aircast run`` submits), in this process."""
    s = ray_session
    names = {"aggs": unique("aggs"), "alerts": unique("alerts"), "dlq": unique("dlq")}
    config = {
        "kafka": {
            "bootstrap_servers": s.kafka.bootstrap_servers,
            "aggregates_topic": names["aggs"],
            "dead_letter_topic": names["dlq"],
        },
        "redis": {"url": s.redis.url, "key_prefix": unique("alerts") + ":"},
        "ray": {"address": s.ray.address},
        "alerts": {"topic": names["alerts"], "group_id": unique("alerts")},
    }
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert runtime.main(["--config", str(path), "--until-idle", "1"]) == 0
    client = admin(s.kafka)
    try:
        assert set(names.values()) <= set(client.list_topics())
    finally:
        client.close()
