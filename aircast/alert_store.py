"""Alert rules, episode states and the alert outbox in Redis (under ``redis.key_prefix``).

Keys::

    <prefix>alerts:rules            hash  rule id → Rule JSON
    <prefix>alerts:state:<rule id>  hash  sensor id → Episode JSON
    <prefix>alerts:outbox           hash  alert id → {"alert", "webhook_url", "produced"}

Why an outbox: an evaluator writes the episodes a batch of aggregates changed **and**
the alerts they emitted in one Redis transaction (:meth:`AlertStore.save`), then
delivers the outbox (Kafka, then the webhook), then commits its Kafka offsets. Killed
anywhere in between, a restarted evaluator first delivers what the outbox still holds,
then reads the uncommitted aggregates again, which the saved episodes ignore (each
remembers the last window it took). So an alert is neither lost nor fired twice by a
restart; at worst one delivered just before the kill is delivered again, with the same
``id`` (``produced`` keeps that from happening on the Kafka side once it was stored).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import redis
from pydantic import ValidationError

from aircast.alerts import Alert, Episode, Rule
from aircast.cache import key
from aircast.settings import RedisSettings

log = logging.getLogger(__name__)

__all__ = ["AlertStore", "OutboxEntry"]


@dataclass(frozen=True)
class OutboxEntry:
    """An alert still to deliver, where its webhook is (None: Kafka only), and whether
    Kafka already holds it."""

    alert: Alert
    webhook_url: str | None
    produced: bool = False

    def to_json(self) -> str:
        return json.dumps(
            {
                "alert": self.alert.model_dump(mode="json"),
                "webhook_url": self.webhook_url,
                "produced": self.produced,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> OutboxEntry:
        d = json.loads(text)
        return cls(Alert.model_validate(d["alert"]), d.get("webhook_url"), bool(d["produced"]))


class AlertStore:
    """Synchronous (redis-py); the API calls it through ``asyncio.to_thread``."""

    def __init__(self, client: redis.Redis[str], settings: RedisSettings) -> None:
        self.redis = client
        self.settings = settings
        self.rules_key = key(settings, "alerts", "rules")
        self.outbox_key = key(settings, "alerts", "outbox")

    def state_key(self, rule_id: str) -> str:
        return key(self.settings, "alerts", "state", rule_id)

    # -- rules ---------------------------------------------------------------------

    def count_rules(self) -> int:
        return int(self.redis.hlen(self.rules_key))

    def add_rule(self, rule: Rule) -> None:
        self.redis.hset(self.rules_key, rule.id, rule.model_dump_json())

    def rule(self, rule_id: str) -> Rule | None:
        raw = self.redis.hget(self.rules_key, rule_id)
        return None if raw is None else Rule.model_validate_json(raw)

    def rules(self) -> list[Rule]:
        """Every stored rule, oldest first. A stored rule that no longer validates (a
        schema change) is logged and left out, not fatal to the rest."""
        out = []
        for rule_id, raw in self.redis.hgetall(self.rules_key).items():
            try:
                out.append(Rule.model_validate_json(raw))
            except ValidationError as exc:
                log.warning("alert rule unreadable rule=%s error=%s", rule_id, exc)
        return sorted(out, key=lambda r: (r.created_at, r.id))

    def rule_ids(self) -> set[str]:
        return set(self.redis.hkeys(self.rules_key))

    def rules_by_id(self, rule_ids: list[str]) -> list[Rule]:
        """The stored rules of these ids (those still there, and readable)."""
        if not rule_ids:
            return []
        out = []
        for rule_id, raw in zip(rule_ids, self.redis.hmget(self.rules_key, rule_ids), strict=True):
            if raw is None:
                continue
            try:
                out.append(Rule.model_validate_json(raw))
            except ValidationError as exc:
                log.warning("alert rule unreadable rule=%s error=%s", rule_id, exc)
        return out

    def delete_rule(self, rule_id: str) -> bool:
        """Remove a rule and its episodes; False when there was no such rule."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(self.rules_key, rule_id)
        pipe.delete(self.state_key(rule_id))
        removed, _ = pipe.execute()
        return bool(removed)

    # -- episodes ------------------------------------------------------------------

    def episodes(self, rule_id: str) -> dict[int, Episode]:
        raw = self.redis.hgetall(self.state_key(rule_id))
        return {int(s): Episode.from_dict(json.loads(v)) for s, v in raw.items()}

    def forget(self, rule_id: str) -> None:
        """Drop the episodes of a rule that is gone."""
        self.redis.delete(self.state_key(rule_id))

    def save(
        self,
        changes: Mapping[tuple[str, int], Episode],
        outbox: list[OutboxEntry],
    ) -> None:
        """Changed episodes and the alerts they emitted, in one transaction."""
        if not changes and not outbox:
            return
        per_rule: dict[str, dict[str | bytes, bytes | float | int | str]] = {}
        for (rule_id, sensor_id), episode in changes.items():
            per_rule.setdefault(rule_id, {})[str(sensor_id)] = json.dumps(episode.to_dict())
        pipe = self.redis.pipeline(transaction=True)
        for rule_id, mapping in per_rule.items():
            pipe.hset(self.state_key(rule_id), mapping=mapping)
        if outbox:
            pipe.hset(self.outbox_key, mapping={e.alert.id: e.to_json() for e in outbox})
        pipe.execute()

    # -- outbox --------------------------------------------------------------------

    def pending(self) -> list[OutboxEntry]:
        """Alerts not yet delivered, in the order they happened (fired before resolved)."""
        entries = [OutboxEntry.from_json(v) for v in self.redis.hvals(self.outbox_key)]
        return sorted(entries, key=lambda e: (e.alert.at, e.alert.status != "fired", e.alert.id))

    def mark_produced(self, entry: OutboxEntry) -> OutboxEntry:
        done = OutboxEntry(entry.alert, entry.webhook_url, produced=True)
        self.redis.hset(self.outbox_key, entry.alert.id, done.to_json())
        return done

    def delivered(self, alert_id: str) -> None:
        self.redis.hdel(self.outbox_key, alert_id)
