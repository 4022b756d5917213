"""Where snapshots come from: the live feed, the simulator (its history seeded first) or
an archive replay, chosen by settings. The ingest job's shell (``actors/ingest.py``)
only shards each snapshot over its scraper actors."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import date

from aircast.backfill import Backfill, seed_simulator_history
from aircast.geocode import make_geocoder
from aircast.influx import InfluxV1
from aircast.records import window_start
from aircast.settings import Settings
from aircast.simulator import SNAPSHOT_WINDOW_S, Network, SimulatorServer, current_window_end
from aircast.sources import ArchiveSource, HttpSource, Snapshot, SourceError, probe

log = logging.getLogger(__name__)


def snapshots(settings: Settings, source: str, *, once: bool) -> Iterator[Snapshot | None]:
    """Snapshots forever (None: nothing new this time, or a failed fetch that was logged
    and is retried next interval). With ``once`` a failed fetch raises."""
    cfg = settings.ingest
    if source == "archive":
        if not cfg.archive or not cfg.archive_from or not cfg.archive_to:
            raise SourceError("archive replay needs ingest.archive, archive_from, archive_to")
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
            yield simulator_history(settings, network, url)
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


def simulator_history(settings: Settings, network: Network, url: str) -> Snapshot:
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
