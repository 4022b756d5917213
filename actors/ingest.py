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
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import ray
from ray.actor import ActorProxy
from ray.util import metrics

from aircast import options, telemetry
from aircast.backfill import Backfill, seed_simulator_history
from aircast.bulk import collector_paused
from aircast.geocode import make_geocoder
from aircast.influx import InfluxV1
from aircast.ingest import IngestCounts, Ingestor, shard_of
from aircast.kafka import ensure_topics
from aircast.records import window_start
from aircast.retry import Backoff, describe, retrying
from aircast.settings import Settings, load_settings
from aircast.simulator import SNAPSHOT_WINDOW_S, Network, SimulatorServer, current_window_end
from aircast.sources import ArchiveSource, HttpSource, Snapshot, SourceError, probe

log = logging.getLogger(__name__)

# One snapshot's ingest: 4 attempts, waiting 1-2, 2-4, then 4-8 s (aircast.retry).
SNAPSHOT_ATTEMPTS = 4
SNAPSHOT_BACKOFF = Backoff(first_s=2.0, max_s=8.0)


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


def _sources(settings: Settings, source: str, *, once: bool) -> Iterator[Snapshot | None]:
    """Snapshots forever (None: nothing new this time, or a failed fetch that was logged
    and is retried next interval). With ``once`` a failed fetch raises."""
    cfg = settings.ingest
    if source == "archive":
        if not cfg.archive or not cfg.archive_from or not cfg.archive_to:
            raise SystemExit("archive replay needs ingest.archive, archive_from, archive_to")
        yield from ArchiveSource(
            cfg.archive,
            date.fromisoformat(cfg.archive_from),
            date.fromisoformat(cfg.archive_to),
            speedup=cfg.archive_speedup,
            shift_to_now=cfg.archive_shift_to_now,
        ).paced()
        return
    url = cfg.live_url
    server: SimulatorServer | None = None
    if source == "simulator":
        refresh = cfg.simulator_refresh_s
        network = Network(cfg.simulator_sensors, cfg.simulator_seed)
        server = SimulatorServer(
            network, port=0, clock=lambda: current_window_end(refresh_s=refresh)
        ).start()
        url = server.url
        if cfg.simulator_history_h > 0:
            yield _simulator_history(settings, network, url)
    http = HttpSource(url, name=source, timeout_s=cfg.timeout_s, retries=cfg.retries)
    try:
        while True:
            try:
                snapshot = http.fetch()
            except SourceError as exc:
                if once:
                    raise
                log.error(
                    "fetch failed source=%s error=%s; next try in %.0fs",
                    source,
                    exc,
                    cfg.interval_s,
                )
                snapshot = None
            yield snapshot
            # Let go of it before fetching the next: a 10x network's parsed file is ~1
            # GB of dicts, and the coordinator must never hold two at once.
            snapshot = None
    finally:
        http.close()
        if server is not None:
            server.stop()


def _simulator_history(settings: Settings, network: Network, url: str) -> Snapshot:
    """Seed the simulated network's last ``ingest.simulator_history_h`` hours; the
    snapshot that carries on from there to now.

    Complete 10-minute windows go straight to InfluxDB through the backfill's path
    (:func:`aircast.backfill.seed_simulator_history`): a day of a few hundred sensors in
    seconds, where the pipeline would take minutes. The window the feed's first file
    falls in, and everything after it, comes as this one snapshot through the scrapers,
    Kafka and the Flink job, so that window is aggregated whole by the pipeline, and the
    feed's next file overlaps it (the scrapers drop what they already produced)."""
    cfg = settings.ingest
    refresh = cfg.simulator_refresh_s
    boundary = window_start(current_window_end(refresh_s=refresh) - SNAPSHOT_WINDOW_S)
    started = time.monotonic()
    with InfluxV1(settings.influx) as influx:
        influx.ensure_databases()
        backfill = Backfill(influx, settings.influx, geocoder=make_geocoder(cfg))
        report = seed_simulator_history(
            backfill, network, boundary - cfg.simulator_history_h * 3600, boundary
        )
    log.info(
        "simulator history seeded hours=%d sensors=%d readings=%d aggregates=%d "
        "rejected=%s seconds=%.1f",
        cfg.simulator_history_h,
        len(network.sensors),
        report.readings_written,
        report.aggregates_written,
        dict(report.rejected),
        time.monotonic() - started,
    )
    now = current_window_end(refresh_s=refresh)
    return Snapshot(
        source="simulator",
        origin=url,
        fetched_at=time.time(),
        records=network.snapshot(now, now - boundary),
    )


def choose_source(settings: Settings) -> str:
    """``auto``: live when the live API answers, otherwise the simulator — loudly."""
    source = settings.ingest.source
    if source != "auto":
        return source
    if probe(settings.ingest.live_url):
        log.info("live API reachable url=%s: ingesting the live feed", settings.ingest.live_url)
        return "live"
    log.warning(
        "LIVE API UNREACHABLE url=%s: falling back to the SIMULATOR (%d synthetic sensors)",
        settings.ingest.live_url,
        settings.ingest.simulator_sensors,
    )
    return "simulator"


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
            attempts=SNAPSHOT_ATTEMPTS,
            backoff=SNAPSHOT_BACKOFF,
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
                SNAPSHOT_ATTEMPTS,
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
        for snapshot in _sources(self.settings, source, once=once):
            started = time.monotonic()
            if snapshot is None:
                log.info("snapshot unchanged source=%s (304)", source)
            else:
                counts = self.ingest_retrying(snapshot)
                snapshot = None  # released before the next fetch (see _sources)
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
