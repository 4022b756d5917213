"""make bench-e2e: one 40,000-record snapshot from the simulator, served over HTTP on
127.0.0.1, from the start of the fetch until every valid reading is queryable in
InfluxDB — through the whole chain: scraper actors → raw topic → the PyFlink job (a
stack service, as under `make run`) → readings topic → collector actors → InfluxDB.

Beside it, in the same run and into the same InfluxDB, the closest existing tool:
luftdatenpumpe 0.22 (sensor.community → InfluxDB 1.x, geocoding off) takes the same
snapshot from the same server (its ``LuftdatenPumpe.uri`` pointed there at run time;
see benchmarks/peer_luftdatenpumpe.py; its own virtualenv, .venv-peer).

aircast takes consecutive 5-minute files of the network: the first into the freshly
started stack ("cold": the Flink job's JVM has compiled nothing of its data path yet),
then three more, as a running pipeline (``make run``) takes every file after its first;
the peer takes the last file three times (each into a database of its own). Like the
other benchmarks, three rounds a side and the best of each: runs of the same build here
vary by a fifth or more; every round is listed, and the medians' ratio beside.

Last line: one JSON object with the times and ratio = peer seconds / aircast seconds
(best of each) for the running pipeline's files, ratio_median, and ratio_cold for the
first file (goal ≥ 2: aircast at least twice as fast while doing more: validation, dead
letters, aggregates, three hops).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console

from benchmarks._common import emit, private_stack

if TYPE_CHECKING:
    from actors.collect import Supervisor
    from aircast.influx import InfluxV1

REPO = Path(__file__).resolve().parent.parent
PEER_PYTHON = REPO / ".venv-peer" / "bin" / "python"
SENSORS = 19_400  # ≈ 40,000 records in a 5-minute window, as in bench-ingest
TIMEOUT_S = 1800
ROUNDS = 3
STALL_S = 120


def count_points(
    influx: InfluxV1, database: str, measures: list[str], since: int, until: int
) -> int:
    names = ",".join(f'"{m}"' for m in measures)
    span = f"time >= {since}s AND time <= {until}s"
    rows = influx.rows(f'SELECT count("value") FROM {names} WHERE {span}', database)
    return sum(int(r["count"]) for r in rows)


def collector_stats(supervisor: Supervisor) -> list[dict[str, Any]]:
    import ray

    return list(ray.get([a.stats.remote() for a in supervisor.actors]))


def points_written(supervisor: Supervisor, database: str) -> int:
    """Points InfluxDB has acknowledged from the collector actors, into ``database``."""
    return sum(int(s["points"].get(database, 0)) for s in collector_stats(supervisor))


def refetched(supervisor: Supervisor) -> int:
    """Offsets a fetch had skipped that the collectors read again (see Collector._gap)."""
    return sum(int(s["refetched"]) for s in collector_stats(supervisor))


def main() -> None:
    import ray

    from actors.collect import Supervisor
    from actors.ingest import Coordinator
    from aircast.audit import outcomes_of_message
    from aircast.influx import InfluxV1
    from aircast.kafka import ensure_topics
    from aircast.records import Reading
    from aircast.simulator import Network, SimulatorServer, current_window_end
    from aircast.sources import HttpSource

    if not PEER_PYTHON.exists():
        raise SystemExit(f"{PEER_PYTHON} missing: run `make bench-e2e` (it builds .venv-peer)")
    console = Console(stderr=True)
    with private_stack("redis", "kafka", "influxdb", "ray", "flink") as settings:
        ray.init(address=settings.ray.address, log_to_driver=False)
        ensure_topics(settings.kafka)
        window = current_window_end()
        # Consecutive 5-minute files of the same network: the first into the freshly
        # started stack (cold: the job's JVM has compiled nothing of its data path yet),
        # the others as a running pipeline takes every file after its first.
        windows = [window - 300 * (ROUNDS - i) for i in range(ROUNDS + 1)]
        clock = [windows[0]]
        server = SimulatorServer(Network(SENSORS, seed=11), clock=lambda: clock[0]).start()
        with console.status("generating the snapshots; starting scraper and collector actors"):
            snapshots = []
            for w in windows:
                body = server._server.body(w)
                records = json.loads(body)
                expected = {
                    (r.measure, r.sensor_id, r.timestamp)
                    for rec in records
                    for r in outcomes_of_message(json.dumps(rec).encode())
                    if isinstance(r, Reading)
                }
                snapshots.append((w, records, expected))
            measures = sorted({m for _, _, e in snapshots for m, _, _ in e})
            coordinator = Coordinator(settings)
            supervisor = Supervisor(settings)
            ray.get([a.pid.remote() for a in supervisor.actors])
            running = [a.run.remote(None) for a in supervisor.actors]

        # -- aircast ----------------------------------------------------------------
        influx = InfluxV1(settings.influx)
        timings = []
        taken: set[tuple[str, int, int]] = set()
        labels = ["cold"] + [f"running {i + 1}" for i in range(ROUNDS)]
        for label, (w, records, expected) in zip(labels, snapshots, strict=True):
            clock[0] = w
            since = min(t for _, _, t in expected)
            until = max(t for _, _, t in expected)
            fresh = len(expected - taken)  # readings this file adds (none taken twice)
            # What the span holds once this file is in (the files may share a second).
            taken |= expected
            target = sum(since <= t <= until for _, _, t in taken)
            before = points_written(supervisor, settings.influx.raw_database)
            source = HttpSource(server.url, name="simulator", timeout_s=60)
            # The server keeps one window's body: it is built for this file before the
            # clock starts (the peer's fetch, later, finds it built too).
            server._server.body(w)
            t0 = time.perf_counter()
            snapshot = source.fetch()
            assert snapshot is not None
            counts = coordinator.ingest(snapshot)
            ingested = time.perf_counter() - t0
            # Done when InfluxDB has acknowledged a write of every new reading (the
            # collectors' counts, asked every 0.1 s) and a count query then finds them all.
            # Polling with the count query itself weighed on the run: over ~40,000 series
            # it costs InfluxDB 0.4-2.7 s of CPU each time. If the first count falls short,
            # the time is when a later count finds them all.
            confirmed_late = False
            progress = (0, time.perf_counter())  # points written, and since when
            with console.status("") as status:
                while True:
                    written = points_written(supervisor, settings.influx.raw_database) - before
                    elapsed = time.perf_counter() - t0
                    if written != progress[0]:
                        progress = (written, time.perf_counter())
                    elif time.perf_counter() - progress[1] > STALL_S:
                        # Not a slow run: a reading is missing (see `aircast audit`).
                        stored = count_points(
                            influx, settings.influx.raw_database, measures, since, until
                        )
                        raise SystemExit(
                            f"aircast ({label}): nothing written for {STALL_S} s; "
                            f"{written:,} of {fresh:,} readings written, {stored:,} of "
                            f"{target:,} queryable; skipped offsets the collectors read "
                            f"again: {refetched(supervisor):,}"
                        )
                    if written >= fresh:
                        stored = count_points(
                            influx, settings.influx.raw_database, measures, since, until
                        )
                        if stored >= target:
                            seconds = time.perf_counter() - t0 if confirmed_late else elapsed
                            break
                        confirmed_late = True
                    status.update(
                        f"aircast ({label}): {written:,} of {fresh:,} readings written "
                        f"({elapsed:.0f} s)"
                    )
                    if elapsed > TIMEOUT_S:
                        raise SystemExit(f"aircast did not finish in {TIMEOUT_S} s: {written:,}")
                    time.sleep(0.5 if confirmed_late else 0.1)
            timings.append((seconds, ingested))
            console.print(
                f"aircast ({label}): {len(records):,} records → {len(expected):,} readings "
                f"queryable in {seconds:.1f} s (ingest {ingested:.1f} s; produced "
                f"{counts.produced:,})"
            )
        (cold_s, cold_ingest_s), running_files = timings[0], timings[1:]
        reread = refetched(supervisor)
        supervisor.stop()
        ray.get(running)

        # -- luftdatenpumpe 0.22 ----------------------------------------------------
        u = urlparse(settings.influx.url)
        password = settings.influx.password.get_secret_value() if settings.influx.password else ""
        peer_rounds, peer_values = [], []
        from aircast.measures import BY_NAME

        for i in range(ROUNDS):
            database = f"peer_ldi_{i + 1}"
            dsn = (
                f"influxdb://{quote(settings.influx.username or '')}:{quote(password)}"
                f"@{u.hostname}:{u.port}/{database}"
            )
            with console.status(f"luftdatenpumpe 0.22, round {i + 1}: the last snapshot"):
                done = subprocess.run(
                    [
                        str(PEER_PYTHON),
                        str(REPO / "benchmarks" / "peer_luftdatenpumpe.py"),
                        server.url,
                        dsn,
                    ],
                    capture_output=True,
                    text=True,
                    timeout=TIMEOUT_S,
                )
            if done.returncode != 0:
                raise SystemExit(f"luftdatenpumpe failed:\n{done.stderr[-3000:]}")
            peer_rounds.append(float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"]))
            # Its points carry one field per value type: the values it stored, per type.
            peer_counts = {
                k.removeprefix("count_"): int(v)
                for r in influx.rows('SELECT count(*) FROM "ldi_readings"', database)
                for k, v in r.items()
                if k.startswith("count_") and v is not None
            }
            peer_values.append(sum(n for k, n in peer_counts.items() if k in BY_NAME))
            console.print(
                f"luftdatenpumpe, round {i + 1}: {peer_values[-1]:,} values written in "
                f"{peer_rounds[-1]:.1f} s"
            )
        influx.close()
        server.stop()
        ray.shutdown()

    aircast_rounds = [seconds for seconds, _ in running_files]
    aircast_s, ingested = min(running_files)
    peer_s = min(peer_rounds)
    emit(
        {
            "benchmark": "e2e",
            "records": len(records),
            "readings": len(expected),
            "aircast_seconds": round(aircast_s, 2),
            "aircast_ingest_seconds": round(ingested, 2),
            "aircast_rounds": [round(x, 2) for x in aircast_rounds],
            "aircast_cold_seconds": round(cold_s, 2),
            "aircast_cold_ingest_seconds": round(cold_ingest_s, 2),
            "peer": "luftdatenpumpe 0.22",
            "peer_seconds": round(peer_s, 2),
            "peer_rounds": [round(x, 2) for x in peer_rounds],
            "peer_values_written": peer_values,
            "ratio": round(peer_s / aircast_s, 3),
            "ratio_median": round(median(peer_rounds) / median(aircast_rounds), 3),
            "ratio_cold": round(peer_s / cold_s, 3),
            "rounds": ROUNDS,
            "collector_refetched": reread,
            "target_ratio": 2.0,
        }
    )


if __name__ == "__main__":
    main()
