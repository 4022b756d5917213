"""Ingestion of one shard of a snapshot: parse, dedupe, enrich, produce.

Runs inside a scraper actor (``actors/ingest.py``), or in-process for tests and tools.
For every feed record of the shard exactly one thing happens:

* its envelope is unusable → a dead letter with the reason (malformed, missing_field,
  bad_timestamp, bad_coordinates, zero_coordinates) and the record as received;
* the same sensor and timestamp twice in this snapshot → a dead letter ``duplicate`` for
  the second (a defect of the feed);
* any of those already dead-lettered, from an earlier snapshot or earlier in this one
  (the same reason and the record byte for byte: e.g. a bad record the feed repeated)
  → counted as ``rejected_again``, not lettered again: a bad record stays in the live
  file for its 5 minutes like any other, and lettered in each file it was five letters
  for one defect (at 10x the network ~4,600 a minute of ~5,800).
  Redis keeps ``<prefix>lettered:<digest>`` for ``ingest.dedupe_ttl_s``, set after the
  letters are acknowledged (a crash in between letters again: at least once);
* the same sensor and timestamp already produced from an earlier snapshot, with the same
  values → counted as ``resighted``, not a letter: the live API's file covers the last
  5 minutes and is fetched every minute, so each record is *expected* in several
  successive files (at network scale ~90 % of every file). Redis keeps
  ``<prefix>seen:<sensor>:<timestamp>`` → a fingerprint of the values for
  ``ingest.dedupe_ttl_s``; a re-sighting whose values differ from what was produced is
  a dead letter ``duplicate`` with both fingerprints (the first version stands);
* otherwise it is produced to the raw topic, keyed by sensor id, as received plus
  ``"place"`` (city, region, country, country_code) from the cached geocoder.

Values inside a record are judged later, by the Flink job (one outcome per value).

Ordering gives the delivery guarantee: records are produced and flushed (acks=all)
before they are marked seen. A crash in between can produce a record twice; the Flink
job's keyed dedupe turns the repeat into a ``duplicate`` dead letter, so nothing is
written twice downstream.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis

from aircast.bulk import collector_paused
from aircast.cache import key, redis_client, set_many
from aircast.deadletters import DeadLetters
from aircast.errors import InvalidRecord
from aircast.geocode import CachedGeocoder, Geocoder, make_geocoder
from aircast.kafka import Producer
from aircast.records import (
    DUPLICATE,
    FeedRecord,
    dumps_feed,
    parse_feed_record,
    value_count,
)
from aircast.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class IngestCounts:
    records: int = 0
    produced: int = 0
    values_produced: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    rejected_values: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    resighted: int = 0  # already produced from an earlier snapshot, same values
    rejected_again: int = 0  # the same defect already dead-lettered (earlier or here)

    def merge(self, other: IngestCounts) -> None:
        self.records += other.records
        self.produced += other.produced
        self.values_produced += other.values_produced
        self.rejected.update(other.rejected)
        self.rejected_values += other.rejected_values
        self.cache_hits += other.cache_hits
        self.cache_misses += other.cache_misses
        self.resighted += other.resighted
        self.rejected_again += other.rejected_again

    @property
    def accounted(self) -> int:
        """Records with an outcome: every record of a snapshot has exactly one."""
        return self.produced + self.resighted + sum(self.rejected.values()) + self.rejected_again

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "produced": self.produced,
            "values_produced": self.values_produced,
            "rejected": dict(self.rejected),
            "rejected_values": self.rejected_values,
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
            "resighted": self.resighted,
            "rejected_again": self.rejected_again,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IngestCounts:
        return cls(
            d["records"],
            d["produced"],
            d["values_produced"],
            Counter(d["rejected"]),
            d["rejected_values"],
            d["cache_hits"],
            d["cache_misses"],
            d["resighted"],
            d["rejected_again"],
        )


# Earlier versions marked a record seen with "1" (no fingerprint): taken as the same.
LEGACY_SEEN = "1"


def fingerprint(record: FeedRecord) -> str:
    """A short stable digest of a record's values as sent (8 hex digits, never "1")."""
    text = "\x1f".join(f"{t}={v}" for t, v in record.values)
    return f"{zlib.crc32(text.encode()):08x}"


@dataclass(frozen=True)
class _Rejection:
    reason: str
    detail: str
    payload: str  # the record as it stood in the snapshot's JSON
    values: int
    key: str | None

    @property
    def digest(self) -> str:
        """Which defect this is: the reason and the record byte for byte (the detail may
        name the snapshot's context; the payload and reason are what a reader dedupes)."""
        text = f"{self.reason}\x1f{self.payload}".encode()
        return hashlib.blake2b(text, digest_size=12).hexdigest()


class Ingestor:
    """Holds the clients of one scraper (opened once, reused for every snapshot)."""

    def __init__(
        self,
        settings: Settings,
        *,
        producer: Producer | None = None,
        client: redis.Redis[str] | None = None,
        geocoder: Geocoder | None = None,
    ) -> None:
        self.settings = settings
        self.producer = producer or Producer(settings.kafka)
        self.redis = client or redis_client(settings.redis)
        self.places = CachedGeocoder(
            geocoder or make_geocoder(settings.ingest),
            self.redis,
            settings.redis,
            settings.ingest.place_ttl_s,
        )
        self.dead = DeadLetters(self.producer, settings.kafka.dead_letter_topic, "ingest")

    def close(self) -> None:
        self.producer.close()
        self.redis.close()

    def _seen_key(self, record: FeedRecord) -> str:
        return key(self.settings.redis, "seen", record.dedupe_key)

    def process(self, records: list[Any], source: str) -> IngestCounts:
        """One shard, in chunks of ``ingest.chunk_records``: each chunk is parsed, deduped,
        geocoded and handed to the producer before the next is parsed, so the first
        records reach the broker (and the Flink job starts on them) a chunk into the
        shard instead of after all of it. Nothing is marked seen until every produced
        record of the shard is acknowledged (one flush at the end), as before.

        The garbage collector is paused meanwhile (:mod:`aircast.bulk`)."""
        with collector_paused():
            return self._process(records, source)

    def _process(self, records: list[Any], source: str) -> IngestCounts:
        counts = IngestCounts(records=len(records))
        rejections: list[_Rejection] = []
        produced: list[FeedRecord] = []
        in_shard: set[str] = set()
        size = self.settings.ingest.chunk_records
        for start in range(0, len(records), size):
            valid = self._parse(records[start : start + size], in_shard, rejections)
            if valid:
                fresh = self._unseen(valid, counts, rejections)
                self._send(fresh, counts)
                produced.extend(record for record, _ in fresh)
        if produced:
            self._commit(produced, counts)
        self._letter(rejections, source, counts)
        return counts

    def _parse(
        self, records: list[Any], in_shard: set[str], rejections: list[_Rejection]
    ) -> list[tuple[FeedRecord, Any]]:
        """The records whose envelope is usable and not repeated in the shard."""
        valid: list[tuple[FeedRecord, Any]] = []
        for raw in records:
            try:
                record = parse_feed_record(raw)
            except InvalidRecord as exc:
                rejections.append(_rejection(exc.reason, exc.detail, raw))
                continue
            if record.dedupe_key in in_shard:
                rejections.append(
                    _rejection(
                        DUPLICATE,
                        f"sensor {record.dedupe_key} repeated in the snapshot",
                        raw,
                        record,
                    )
                )
                continue
            in_shard.add(record.dedupe_key)
            valid.append((record, raw))
        return valid

    def _unseen(
        self,
        valid: list[tuple[FeedRecord, Any]],
        counts: IngestCounts,
        rejections: list[_Rejection],
    ) -> list[tuple[FeedRecord, Any]]:
        """The records no earlier snapshot produced; re-sightings counted, changed
        re-sightings rejected."""
        seen = self.redis.mget([self._seen_key(record) for record, _ in valid])
        fresh: list[tuple[FeedRecord, Any]] = []
        for (record, raw), before in zip(valid, seen, strict=True):
            if before is None:
                fresh.append((record, raw))
            elif before in (fingerprint(record), LEGACY_SEEN):
                counts.resighted += 1
            else:
                rejections.append(
                    _rejection(
                        DUPLICATE,
                        f"sensor {record.dedupe_key} already taken in with other values "
                        f"(fingerprint {before}, now {fingerprint(record)})",
                        raw,
                        record,
                    )
                )
        return fresh

    def _send(self, fresh: list[tuple[FeedRecord, Any]], counts: IngestCounts) -> None:
        """Enrich with the place and hand to the producer (not yet acknowledged)."""
        if not fresh:
            return
        locations = {r.location_id: (r.latitude, r.longitude) for r, _ in fresh}
        hits, misses = self.places.hits, self.places.misses
        places = self.places.places(locations)
        counts.cache_hits += self.places.hits - hits
        counts.cache_misses += self.places.misses - misses
        topic = self.settings.kafka.raw_topic
        send = self.producer.send
        for record, raw in fresh:
            place = places.get(record.location_id)
            enriched = dict(raw)
            enriched["place"] = place.to_dict() if place else {}
            # The message timestamp is the measurement time: the Flink job makes its
            # watermarks from it, per partition (and the audit's span is in it).
            send(
                topic,
                dumps_feed(enriched),
                str(record.sensor_id).encode(),
                timestamp_ms=record.timestamp * 1000,
            )

    def _commit(self, produced: list[FeedRecord], counts: IngestCounts) -> None:
        # Raises if the broker refused or did not acknowledge any: nothing is marked seen.
        self.producer.flush()
        set_many(
            self.redis,
            {self._seen_key(r): fingerprint(r) for r in produced},
            self.settings.ingest.dedupe_ttl_s,
        )
        counts.produced += len(produced)
        counts.values_produced += sum(len(r.values) for r in produced)

    def _lettered_key(self, rejection: _Rejection) -> str:
        return key(self.settings.redis, "lettered", rejection.digest)

    def _letter(self, rejections: list[_Rejection], source: str, counts: IngestCounts) -> None:
        """Dead-letter the rejections not lettered before (in an earlier snapshot or in
        this one); flushed (acknowledged) before they are marked lettered."""
        if not rejections:
            return
        names = [self._lettered_key(r) for r in rejections]
        new: dict[str, str] = {}
        for rejection, name, lettered in zip(
            rejections, names, self.redis.mget(names), strict=True
        ):
            if lettered is not None or name in new:  # an earlier file, or this one
                counts.rejected_again += 1
                continue
            self.dead.add(
                rejection.reason,
                rejection.detail,
                rejection.payload,
                key=rejection.key,
                values=rejection.values,
                source=source,
            )
            counts.rejected[rejection.reason] += 1
            counts.rejected_values += rejection.values
            new[name] = "1"
        # Raises if the broker refused or did not acknowledge any: nothing is marked.
        self.producer.flush()
        set_many(self.redis, new, self.settings.ingest.dedupe_ttl_s)


def _rejection(reason: str, detail: str, raw: Any, record: FeedRecord | None = None) -> _Rejection:
    # The record as it stood in the snapshot's JSON (a bare string stays quoted).
    payload = json.dumps(raw, ensure_ascii=False, separators=(",", ":"), default=repr)
    return _Rejection(
        reason, detail, payload, value_count(raw), str(record.sensor_id) if record else None
    )


def shard_of(raw: Any, shards: int) -> int:
    """The scraper a record goes to: by sensor id, so one sensor's records meet in one
    place (in-snapshot duplicates are caught there). Unparseable records go to shard 0."""
    try:
        sensor_id = int(raw["sensor"]["id"])
    except (TypeError, KeyError, ValueError):
        return 0
    return sensor_id % shards
