"""The dead-letter writer every stage shares: nothing is dropped silently.

A dead letter is a :class:`aircast.records.DeadLetter` JSON message on the dead-letter
topic, keyed by the record's key when it has one. Counts per reason are kept for logs
and metrics.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import Any, Protocol

from aircast import tuning
from aircast.records import DeadLetter

log = logging.getLogger(__name__)


def payload_text(payload: Any) -> str:
    """The payload as received, as text (bytes decoded leniently, objects as JSON)."""
    if isinstance(payload, bytes):
        text = payload.decode("utf-8", errors="replace")
    elif isinstance(payload, str):
        text = payload
    else:
        try:
            text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError):
            text = repr(payload)
    if len(text) > tuning.DEAD_LETTER_MAX_PAYLOAD_CHARS:
        text = text[: tuning.DEAD_LETTER_MAX_PAYLOAD_CHARS] + f"...[cut, {len(text)} chars in all]"
    return text


class Sender(Protocol):
    """What a dead-letter writer needs of a producer: kafka-python's ``KafkaProducer``
    and :class:`aircast.kafka.Producer` both have it (the caller flushes)."""

    def send(self, topic: str, value: bytes | None = ..., key: bytes | None = ...) -> Any: ...


class DeadLetters:
    def __init__(self, producer: Sender, topic: str, stage: str) -> None:
        self.producer = producer
        self.topic = topic
        self.stage = stage
        self.counts: Counter[str] = Counter()
        self.values: Counter[str] = Counter()

    def add(
        self,
        reason: str,
        detail: str,
        payload: Any,
        *,
        key: str | None = None,
        values: int = 1,
        source: str | None = None,
    ) -> None:
        letter = DeadLetter(
            stage=self.stage,
            reason=reason,
            detail=detail,
            payload=payload_text(payload),
            key=key,
            values=values,
            at=int(time.time()),
            source=source,
        )
        self.producer.send(self.topic, key=key.encode() if key else None, value=letter.to_json())
        self.counts[reason] += 1
        self.values[reason] += values

    def take_counts(self) -> dict[str, int]:
        """Counts since the last call (for per-snapshot logs and metrics)."""
        counts = dict(self.counts)
        self.counts.clear()
        return counts
