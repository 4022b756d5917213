"""Alert evaluation on a Ray actor: 10-minute aggregates (Kafka) and served forecasts
(Redis) → rules (:mod:`aircast.alerts`) → ``alerts.topic`` and webhooks.

Run it:

* ``aircast run`` submits it beside ingestion and collection when ``alerts.enabled``;
* ``ray job submit --working-dir . -- python -m actors.alerts`` on a cluster.

One actor reads every partition of ``kafka.aggregates_topic`` (assigned explicitly,
from ``alerts.group_id``'s committed offsets): one sensor's aggregates are on one
partition in window order, and a few hundred aggregates a second at most is light
work for one process. Each batch goes:

1. evaluate (pure, in memory: :class:`aircast.alerts.Engine`);
2. save the changed episodes and the alerts they emitted to Redis in one transaction
   (the outbox, :mod:`aircast.alert_store`);
3. deliver the outbox: produce each alert to ``alerts.topic`` (acknowledged), then POST
   it to its webhook with jittered retries (:mod:`aircast.retry`); a webhook that never
   takes it is dead-lettered with the reason;
4. only then commit the Kafka offsets.

Forecast rules are checked every ``alerts.forecast_check_s`` against the forecasts the
Serve Refresher keeps in Redis (``aircast.forecasts.cache_key``), through the same
save-deliver path. A killed actor is restarted by Ray (its supervisor re-issues
``run``) and resumes from Redis and the committed offsets without firing again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import confluent_kafka
import httpx
import ray
import redis
from confluent_kafka import OFFSET_STORED, TopicPartition

from aircast import options, tuning
from aircast.alert_store import AlertStore, OutboxEntry
from aircast.alerts import WEBHOOK_FAILED, WEBHOOK_REJECTED, Alert, Engine
from aircast.cache import redis_client
from aircast.deadletters import DeadLetters
from aircast.errors import BrokerError, InvalidRecord, ProduceError
from aircast.forecasts import cache_key
from aircast.kafka import Producer, ensure_topics, fast_consumer
from aircast.records import Aggregate
from aircast.retry import (
    Backoff,
    TransientStatus,
    describe,
    retry_after_s,
    retrying,
    transient_http,
)
from aircast.settings import Settings, load_settings

log = logging.getLogger(__name__)


@dataclass
class AlertStats:
    aggregates: int = 0
    undecodable: int = 0
    fired: int = 0
    resolved: int = 0
    produced: int = 0
    webhook_posts: int = 0
    webhook_dead: int = 0
    forecast_checks: int = 0
    commits: int = 0


class WebhookRefused(Exception):
    """A 4xx (not 429): the receiver will not take this alert, however often asked."""


class Evaluator:
    """The loop (no Ray in here); :class:`EvaluatorActor` runs it on Ray."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        k = settings.kafka
        self.store = AlertStore(redis_client(settings.redis), settings.redis)
        self.redis = self.store.redis
        self.engine = Engine()
        self.producer = Producer(k)
        self.dead = DeadLetters(self.producer, k.dead_letter_topic, "alerts")
        self.http = httpx.Client(timeout=settings.alerts.webhook_timeout_s)
        self.consumer = fast_consumer(k, settings.alerts.group_id)
        meta = self.consumer.list_topics(k.aggregates_topic, timeout=10).topics[k.aggregates_topic]
        if meta.error is not None:
            raise BrokerError(f"topic {k.aggregates_topic} unavailable: {meta.error}")
        self.tps = [TopicPartition(k.aggregates_topic, p) for p in sorted(meta.partitions)]
        self.consumer.assign(
            [TopicPartition(t.topic, t.partition, OFFSET_STORED) for t in self.tps]
        )
        self.positions: dict[int, int] = {}  # partition → next offset, once evaluated
        self.stats = AlertStats()
        self.stopping = False
        self._rules_at = -tuning.ALERT_RULES_REFRESH_S
        self._unreadable: set[str] = set()
        self._forecasts_at = time.monotonic()  # the first check after one interval

    def close(self) -> None:
        self.consumer.close()  # auto-commit is off: closing commits nothing
        self.producer.close()
        self.http.close()
        self.redis.close()

    # -- rules ---------------------------------------------------------------------

    def refresh_rules(self) -> None:
        """Take new rules (with their stored episodes) and drop deleted ones. Rules are
        never edited in place (the API creates and deletes), so new ids are all that
        is read and validated."""
        ids = self.store.rule_ids()
        for rule_id in set(self.engine.rules) - ids:
            self.engine.drop(rule_id)
            self.store.forget(rule_id)  # an episode saved after the API deleted the rule
            log.info("alert rule dropped rule=%s", rule_id)
        new = ids - set(self.engine.rules) - self._unreadable
        for rule in self.store.rules_by_id(sorted(new)):
            self.engine.load(rule, self.store.episodes(rule.id))
            log.info("alert rule loaded rule=%s name=%r kind=%s", rule.id, rule.name, rule.kind)
        # Logged once by the store, then left alone until deleted.
        self._unreadable = (self._unreadable | (new - set(self.engine.rules))) & ids
        self._rules_at = time.monotonic()

    # -- one round -------------------------------------------------------------------

    def poll_once(self, timeout_s: float = 0.5) -> int:
        """Read, evaluate, save, deliver, commit: one batch of aggregates (and the
        forecast rules when due). The number of aggregates taken."""
        if time.monotonic() - self._rules_at >= tuning.ALERT_RULES_REFRESH_S:
            self._patiently("alert rules not read", self.refresh_rules)
        alerts: list[Alert] = []
        messages = self.consumer.consume(num_messages=tuning.ALERT_BATCH, timeout=timeout_s)
        now = time.time()
        taken = 0
        for m in messages:
            error = m.error()
            if error is not None:
                log.warning("kafka consume error: %s", error)
                continue
            partition, offset = m.partition(), m.offset()
            assert partition is not None and offset is not None
            self.positions[partition] = offset + 1
            taken += 1
            try:
                aggregate = Aggregate.from_json(m.value() or b"")
            except InvalidRecord:
                # The collector reads the same topic and dead-letters it with its reason.
                self.stats.undecodable += 1
                continue
            alerts.extend(self.engine.aggregate(aggregate, now))
        self.stats.aggregates += taken
        if time.monotonic() - self._forecasts_at >= self.settings.alerts.forecast_check_s:
            alerts.extend(self._patiently("forecasts not read", self.check_forecasts))
        self.settle(alerts)
        if taken:
            self.commit()
        return taken

    def check_forecasts(self) -> list[Alert]:
        """Every forecast rule against the forecasts served for its sensors now."""
        self._forecasts_at = time.monotonic()
        self.stats.forecast_checks += 1
        out: list[Alert] = []
        for rule in self.engine.forecast_rules():
            sensors = self.engine.forecast_sensors(rule)
            found: list[dict[str, Any]] = []
            for i in range(0, len(sensors), 1_000):
                chunk = sensors[i : i + 1_000]
                keys = [cache_key(self.settings.redis, rule.measure, s) for s in chunk]
                found.extend(json.loads(v) for v in self.redis.mget(keys) if v is not None)
            out.extend(self.engine.forecasts(rule, found))
        return out

    def settle(self, alerts: list[Alert]) -> None:
        """Save what changed (episodes and alerts, one transaction), then deliver."""
        changes = self.engine.take_changes()
        entries = [OutboxEntry(a, self._webhook_of(a)) for a in alerts]
        if changes or entries:
            self._patiently("alert state not saved", lambda: self.store.save(changes, entries))
        for a in alerts:
            if a.status == "fired":
                self.stats.fired += 1
            else:
                self.stats.resolved += 1
            log.info(
                "alert %s rule=%s sensor=%d measure=%s value=%.2f since=%d at=%d",
                a.status,
                a.rule_id,
                a.sensor_id,
                a.measure,
                a.value,
                a.since,
                a.at,
            )
        self.deliver()

    def _webhook_of(self, alert: Alert) -> str | None:
        rule = self.engine.rules.get(alert.rule_id)
        own = rule.webhook_url if rule is not None else None
        return own or self.settings.alerts.webhook_url

    # -- delivery --------------------------------------------------------------------

    def deliver(self) -> None:
        """Everything the outbox holds: Kafka first (acknowledged), then the webhook."""
        for entry in self._patiently("alert outbox not read", self.store.pending):
            if not entry.produced:
                self._patiently("alert not produced", lambda e=entry: self._produce(e.alert))
                entry = self._patiently(
                    "alert outbox not updated", lambda e=entry: self.store.mark_produced(e)
                )
            if entry.webhook_url:
                self._post(entry)
            self._patiently(
                "alert outbox not updated", lambda e=entry: self.store.delivered(e.alert.id)
            )

    def _produce(self, alert: Alert) -> None:
        self.producer.send(self.settings.alerts.topic, alert.to_json(), alert.key)
        self.producer.flush()
        self.stats.produced += 1

    def _post(self, entry: OutboxEntry) -> None:
        """POST with jittered retries (``alerts.webhook_retries`` more tries); a webhook
        that never takes it gets the alert as a dead letter with the reason."""
        url = entry.webhook_url
        assert url is not None
        alert = entry.alert
        body = alert.to_json()

        def attempt() -> None:
            self.stats.webhook_posts += 1
            response = self.http.post(
                url,
                content=body,
                headers={"Content-Type": "application/json", "X-Aircast-Alert-Id": alert.id},
            )
            status = response.status_code
            if status == 429 or status >= 500:
                # A receiver's Retry-After is honoured up to the backoff's longest wait:
                # every other alert waits behind this one.
                hint = retry_after_s(response.headers.get("Retry-After"))
                capped = None if hint is None else min(hint, tuning.ALERT_WEBHOOK_BACKOFF_S[1])
                raise TransientStatus(status, capped)
            if status >= 400:
                raise WebhookRefused(f"HTTP {status}: {response.text[:200]}")

        policy = retrying(
            backoff=Backoff(*tuning.ALERT_WEBHOOK_BACKOFF_S),
            retry_on=transient_http,
            attempts=self.settings.alerts.webhook_retries + 1,
            log=log,
            event=f"alert webhook failed alert={alert.id}",
        )
        try:
            policy(attempt)
            return
        except WebhookRefused as exc:
            reason, detail = WEBHOOK_REJECTED, str(exc)
        except (httpx.HTTPError, httpx.InvalidURL, TransientStatus) as exc:
            tries = self.settings.alerts.webhook_retries + 1
            reason, detail = WEBHOOK_FAILED, f"{describe(exc)} after {tries} attempts"
        log.warning("alert webhook gave up alert=%s reason=%s detail=%s", alert.id, reason, detail)
        self.dead.add(reason, f"{detail} url={_redacted(url)}", body, key=alert.key.decode())
        self._patiently("alert dead letter not produced", self.producer.flush)
        self.stats.webhook_dead += 1

    def commit(self) -> None:
        topic = self.settings.kafka.aggregates_topic
        offsets = [TopicPartition(topic, p, o) for p, o in self.positions.items()]
        self._patiently(
            "alert offsets not committed",
            lambda: self.consumer.commit(offsets=offsets, asynchronous=False),
        )
        self.stats.commits += 1

    def _patiently(self, event: str, call: Any) -> Any:
        """``call()``, retried with backoff through Redis or Kafka outages until it
        works or the evaluator is stopped (then the error propagates, nothing is
        committed, and a restart takes up from the last commit)."""
        policy = retrying(
            backoff=Backoff(*tuning.ALERT_OUTAGE_BACKOFF_S),
            retry_on=lambda exc: isinstance(
                exc, redis.RedisError | ProduceError | confluent_kafka.KafkaException
            ),
            stop_when=lambda: self.stopping,
            log=log,
            event=event,
        )
        return policy(call)

    def run(self, *, until_idle_s: float | None = None) -> AlertStats:
        """Loop until stopped (or, with ``until_idle_s``, until nothing came for that long)."""
        self._patiently("alert outbox not delivered", self.deliver)  # what a kill left
        idle_since = time.monotonic()
        while not self.stopping:
            if self.poll_once():
                idle_since = time.monotonic()
            elif until_idle_s is not None and time.monotonic() - idle_since >= until_idle_s:
                break
        return self.stats


def _redacted(url: str) -> str:
    """The URL without its query (a webhook's token often sits there)."""
    return url.split("?", 1)[0]


class EvaluatorActor:
    """The evaluator's Ray actor (made through :data:`RemoteEvaluator`)."""

    def __init__(self, settings: Settings) -> None:
        logging.basicConfig(
            level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
        )
        self.evaluator = Evaluator(settings)
        log.info("alert evaluator ready partitions=%d pid=%d", len(self.evaluator.tps), os.getpid())

    @ray.method
    def pid(self) -> int:
        return os.getpid()

    @ray.method
    def run(self, until_idle_s: float | None = None) -> dict[str, Any]:
        self.evaluator.stopping = False
        self.evaluator.run(until_idle_s=until_idle_s)
        return self._stats()

    @ray.method
    def stop(self) -> None:
        self.evaluator.stopping = True

    @ray.method
    def stats(self) -> dict[str, Any]:
        return self._stats()

    def _stats(self) -> dict[str, Any]:
        s = self.evaluator.stats
        return {
            "aggregates": s.aggregates,
            "undecodable": s.undecodable,
            "stale": self.evaluator.engine.stale,
            "fired": s.fired,
            "resolved": s.resolved,
            "produced": s.produced,
            "webhook_posts": s.webhook_posts,
            "webhook_dead": s.webhook_dead,
            "forecast_checks": s.forecast_checks,
            "commits": s.commits,
            "rules": len(self.evaluator.engine.rules),
            "pid": os.getpid(),
        }


# max_concurrency: stop() and stats() are served while run() loops.
RemoteEvaluator = ray.remote(EvaluatorActor).options(
    max_restarts=-1, max_task_retries=0, num_cpus=0.25, max_concurrency=4
)


def topics(settings: Settings) -> list[str]:
    """The topics the evaluator reads and writes (created when missing)."""
    k = settings.kafka
    return [k.aggregates_topic, k.dead_letter_topic, settings.alerts.topic]


def supervise(actor: Any, *, until_idle_s: float | None = None) -> dict[str, Any]:
    """Keep the actor's ``run`` going: Ray restarts a killed actor (its state is in
    Redis and Kafka), and its ``run`` is issued again."""
    restarts = 0
    while True:
        try:
            result: dict[str, Any] = ray.get(actor.run.remote(until_idle_s))
            return result
        except ray.exceptions.RayActorError as exc:
            restarts += 1
            log.warning(
                "alert evaluator died; restarting restarts=%d error=%s",
                restarts,
                type(exc).__name__,
            )
            time.sleep(1.0)  # Ray is restarting it: its next run waits for that


def run(settings: Settings, *, until_idle_s: float | None = None) -> int:
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if not settings.alerts.enabled:
        log.info("alerts disabled (alerts.enabled=false): nothing to run")
        return 0
    if not ray.is_initialized():
        ray.init(
            address=settings.ray.address, namespace=settings.ray.namespace, log_to_driver=False
        )
    ensure_topics(settings.kafka, topics(settings))
    actor = RemoteEvaluator.remote(settings)
    log.info(
        "alert evaluator started aggregates=%s alerts=%s webhook=%s",
        settings.kafka.aggregates_topic,
        settings.alerts.topic,
        _redacted(settings.alerts.webhook_url or "none"),
    )
    try:
        log.info("alert evaluator finished %s", supervise(actor, until_idle_s=until_idle_s))
    except KeyboardInterrupt:
        ray.get(actor.stop.remote())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actors.alerts")
    options.add_config(parser)
    parser.add_argument(
        "--until-idle", type=float, default=None, help="stop after this many idle seconds"
    )
    args = parser.parse_args(argv)
    return run(load_settings(args.config), until_idle_s=args.until_idle)


if __name__ == "__main__":
    raise SystemExit(main())
