"""Scraping on Ray actors: a coordinator fetches each snapshot and shards it across N
scraper actors, which parse, dedupe, enrich and produce (``aircast.ingest.Ingestor``).

Run it:

* ``aircast ingest [--once] [--source live|simulator|archive]`` on the local stack;
* ``ray job submit --working-dir . -- python -m actors.ingest [--once]`` on a cluster.

A scraper actor that dies is restarted by Ray (``max_restarts``) and the shard's task
is retried (``max_task_retries``): the ingestor's ordering (produce, flush, then mark
seen in Redis) makes a retry safe. A snapshot whose shards fail otherwise (Redis or
Kafka down longer than their clients retry) is ingested again, whole, with backoff; the
coordinator never dies of one snapshot.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from typing import Any

import ray
from ray.actor import ActorProxy
from ray.util import metrics

from aircast import options, telemetry, tuning
from aircast.bulk import collector_paused
from aircast.ingest import IngestCounts, Ingestor, shard_of
from aircast.kafka import ensure_topics
from aircast.retry import Backoff, describe, retrying
from aircast.settings import Settings, load_settings
from aircast.snapshots import choose_source, snapshots
from aircast.sources import Snapshot, SourceError

log = logging.getLogger(__name__)


class Scraper:
    """One shard's worker: its Kafka producer, Redis client and geocoder live here (a
    Ray actor made through :data:`RemoteScraper`; ``@ray.method``: what its handle
    offers)."""

    def __init__(self, settings: Settings, index: int) -> None:
        logging.basicConfig(
            level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
        )
        self.index = index
        self.ingestor = Ingestor(settings)
        tags = telemetry.INGEST_RECORDS.tags
        self.records = metrics.Counter(
            telemetry.INGEST_RECORDS.name,
            description=telemetry.INGEST_RECORDS.description,
            tag_keys=tags,
        )
        self.dead = metrics.Counter(
            telemetry.DEAD_LETTERS.name,
            description=telemetry.DEAD_LETTERS.description,
            tag_keys=telemetry.DEAD_LETTERS.tags,
        )

    @ray.method
    def process(self, records: list[Any], source: str) -> dict[str, Any]:
        counts = self.ingestor.process(records, source)
        if counts.produced:
            self.records.inc(counts.produced, {"outcome": "produced"})
        if counts.resighted:
            self.records.inc(counts.resighted, {"outcome": "resighted"})
        if counts.rejected_again:
            self.records.inc(counts.rejected_again, {"outcome": "rejected_again"})
        for reason, n in counts.rejected.items():
            self.records.inc(n, {"outcome": "duplicate" if reason == "duplicate" else "rejected"})
            self.dead.inc(n, {"stage": "ingest", "reason": reason})
        return counts.to_dict()

    @ray.method
    def ping(self) -> int:
        return self.index


# The actor class Ray makes of Scraper (its name in the dashboard stays Scraper).
RemoteScraper = ray.remote(max_restarts=-1, max_task_retries=3, num_cpus=0.5)(Scraper)


@dataclass(frozen=True)
class Shards:
    """A snapshot's records in Ray's object store, one object per scraper."""

    origin: str  # source:URL, as the scrapers record it
    source: str
    records: int
    refs: list[tuple[ActorProxy[Scraper], ray.ObjectRef[list[Any]]]]  # (scraper, its shard)


class Coordinator:
    """Fetches snapshots and shards them over the scraper actors."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.scrapers = [RemoteScraper.remote(settings, i) for i in range(settings.ingest.scrapers)]
        ray.get([s.ping.remote() for s in self.scrapers])
        self.total = IngestCounts()

    def shard(self, snapshot: Snapshot) -> Shards:
        """The snapshot's records split by sensor, one object per scraper in Ray's object
        store. The records are moved there, not copied: the snapshot's list is emptied,
        so the coordinator does not hold a 10x file's ~1 GB of dicts while the scrapers
        work on their copies, nor through the wait for the next file. The garbage
        collector is paused meanwhile
        (:mod:`aircast.bulk`): the records are freed, never walked."""
        with collector_paused():
            shards: list[list[Any]] = [[] for _ in self.scrapers]
            for raw in snapshot.records:
                shards[shard_of(raw, len(shards))].append(raw)
            records = len(snapshot.records)
            snapshot.records.clear()
            refs = [
                (scraper, ray.put(shard))
                for scraper, shard in zip(self.scrapers, shards, strict=True)
                if shard
            ]
            del shards
        return Shards(f"{snapshot.source}:{snapshot.origin}", snapshot.source, records, refs)

    def ingest(self, snapshot: Snapshot) -> IngestCounts:
        """One snapshot through the scrapers (it takes the snapshot's records: see
        :meth:`shard`)."""
        return self.ingest_shards(self.shard(snapshot))

    def ingest_shards(self, shards: Shards) -> IngestCounts:
        refs = [scraper.process.remote(ref, shards.origin) for scraper, ref in shards.refs]
        # Every shard's outcome is collected (not just up to the first failure), so no
        # error is left unretrieved and a retry starts when all shards have stopped.
        results, errors = [], []
        for ref in refs:
            try:
                results.append(ray.get(ref))
            except ray.exceptions.RayError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
        counts = IngestCounts()
        for result in results:
            counts.merge(IngestCounts.from_dict(result))
        self.total.merge(counts)
        return counts

    def ingest_retrying(self, snapshot: Snapshot) -> IngestCounts | None:
        """:meth:`ingest`, again with backoff when a shard fails (safe: records are
        marked seen only after they were produced); None if every attempt failed. The
        shards are put in the object store once and every attempt reads them there."""
        shards = self.shard(snapshot)
        policy = retrying(
            attempts=tuning.SNAPSHOT_ATTEMPTS,
            backoff=Backoff(*tuning.SNAPSHOT_BACKOFF_S),
            retry_on=lambda exc: isinstance(exc, ray.exceptions.RayError),
            log=log,
            event=f"snapshot failed source={shards.source}",
        )
        try:
            return policy(self.ingest_shards, shards)
        except ray.exceptions.RayError as exc:
            log.error(
                "snapshot given up source=%s records=%d attempts=%d error=%s "
                "(what is still in the feed is taken with the next snapshot)",
                shards.source,
                shards.records,
                tuning.SNAPSHOT_ATTEMPTS,
                describe(exc),
            )
            return None

    def _log_snapshot(self, source: str, counts: IngestCounts, seconds: float) -> None:
        log.info(
            "snapshot ingested source=%s records=%d produced=%d resighted=%d values=%d "
            "rejected=%s rejected_again=%d cache_hits=%d cache_misses=%d seconds=%.2f",
            source,
            counts.records,
            counts.produced,
            counts.resighted,
            counts.values_produced,
            dict(counts.rejected),
            counts.rejected_again,
            counts.cache_hits,
            counts.cache_misses,
            seconds,
        )

    def run(self, source: str, *, once: bool = False, max_snapshots: int | None = None) -> None:
        interval = self.settings.ingest.interval_s
        taken = 0
        # A cycle starts when its fetch does (the generator fetches on next()): a new
        # file every interval, however long fetching a 20-MB body takes, so no file of a
        # feed that publishes every interval is skipped.
        cycle = time.monotonic()
        for snapshot in snapshots(self.settings, source, once=once):
            started = time.monotonic()
            if snapshot is None:
                log.info("snapshot unchanged source=%s (304)", source)
            else:
                counts = self.ingest_retrying(snapshot)
                snapshot = None  # released before the next fetch (see aircast.snapshots)
                taken += 1
                if counts is not None:
                    self._log_snapshot(source, counts, time.monotonic() - started)
            if once or (max_snapshots is not None and taken >= max_snapshots):
                return
            if source != "archive":  # the archive source paces itself
                time.sleep(max(0.0, interval - (time.monotonic() - cycle)))
            cycle = time.monotonic()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actors.ingest")
    options.add_config(parser)
    options.add_ingest(parser)
    args = parser.parse_args(argv)
    settings = options.ingest_settings(load_settings(args.config), args)
    return run(settings, once=args.once)


def run(settings: Settings, *, once: bool = False, source: str | None = None) -> int:
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    ensure_topics(settings.kafka)
    if not ray.is_initialized():
        ray.init(
            address=settings.ray.address, namespace=settings.ray.namespace, log_to_driver=False
        )
    chosen = source or choose_source(settings)
    try:
        Coordinator(settings).run(chosen, once=once)
    except SourceError as exc:
        log.error("ingestion stopped: %s", exc)
        return 1
    except KeyboardInterrupt:
        log.info("ingestion stopped by user")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
