"""make bench-e2e: one 40,000-record snapshot from the simulator, served over HTTP on
127.0.0.1, from the start of the fetch until every valid reading is queryable in
InfluxDB — through the whole chain: scraper actors → raw topic → the PyFlink job (a
stack service, as under `make run`) → readings topic → collector actors → InfluxDB.

Beside it, in the same run and into the same InfluxDB, the closest existing tool:
luftdatenpumpe 0.22 (sensor.community → InfluxDB 1.x, geocoding off) takes the same
snapshot from the same server (its ``LuftdatenPumpe.uri`` pointed there at run time;
see benchmarks/peer_luftdatenpumpe.py; its own virtualenv, .venv-peer).

Last line: one JSON object with both times and ratio = peer seconds / aircast seconds
(goal ≥ 2: aircast at least twice as fast while doing more: validation, dead letters,
aggregates, three hops).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console

from benchmarks._common import emit, private_stack

REPO = Path(__file__).resolve().parent.parent
PEER_PYTHON = REPO / ".venv-peer" / "bin" / "python"
SENSORS = 19_400  # ≈ 40,000 records in a 5-minute window, as in bench-ingest
TIMEOUT_S = 1800


def count_points(influx, database: str, measures: list[str], since: int) -> int:  # type: ignore[no-untyped-def]
    names = ",".join(f'"{m}"' for m in measures)
    rows = influx.rows(f'SELECT count("value") FROM {names} WHERE time >= {since}s', database)
    return sum(int(r["count"]) for r in rows)


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
        server = SimulatorServer(Network(SENSORS, seed=11), clock=lambda: window).start()
        with console.status("generating the snapshot; starting scraper and collector actors"):
            body = server._server.body(window)  # generated before timing (not measured)
            records = json.loads(body)
            expected = {
                (r.measure, r.sensor_id, r.timestamp)
                for rec in records
                for r in outcomes_of_message(json.dumps(rec).encode())
                if isinstance(r, Reading)
            }
            measures = sorted({m for m, _, _ in expected})
            since = min(t for _, _, t in expected)
            coordinator = Coordinator(settings)
            supervisor = Supervisor(settings)
            ray.get([a.pid.remote() for a in supervisor.actors])
            running = [a.run.remote(None) for a in supervisor.actors]

        # -- aircast ----------------------------------------------------------------
        influx = InfluxV1(settings.influx)
        source = HttpSource(server.url, name="simulator", timeout_s=60)
        t0 = time.perf_counter()
        snapshot = source.fetch()
        assert snapshot is not None
        counts = coordinator.ingest(snapshot)
        ingested = time.perf_counter() - t0
        stored = 0
        with console.status("") as status:
            while stored < len(expected):
                stored = count_points(influx, settings.influx.raw_database, measures, since)
                status.update(
                    f"aircast: {stored:,} of {len(expected):,} readings queryable "
                    f"({time.perf_counter() - t0:.0f} s)"
                )
                if time.perf_counter() - t0 > TIMEOUT_S:
                    raise SystemExit(f"aircast did not finish in {TIMEOUT_S} s: {stored:,}")
                time.sleep(0.5)
        aircast_s = time.perf_counter() - t0
        console.print(
            f"aircast: {len(records):,} records → {len(expected):,} readings queryable in "
            f"{aircast_s:.1f} s (ingest {ingested:.1f} s; produced {counts.produced:,})"
        )
        supervisor.stop()
        ray.get(running)

        # -- luftdatenpumpe 0.22 ----------------------------------------------------
        u = urlparse(settings.influx.url)
        password = settings.influx.password.get_secret_value() if settings.influx.password else ""
        dsn = (
            f"influxdb://{quote(settings.influx.username or '')}:{quote(password)}"
            f"@{u.hostname}:{u.port}/peer_ldi"
        )
        with console.status("luftdatenpumpe 0.22: the same snapshot"):
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
        peer_s = float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])
        # Its points carry one field per value type: the values it stored, per type.
        from aircast.measures import BY_NAME

        peer_counts = {
            k.removeprefix("count_"): int(v)
            for r in influx.rows('SELECT count(*) FROM "ldi_readings"', "peer_ldi")
            for k, v in r.items()
            if k.startswith("count_") and v is not None
        }
        peer_values = sum(n for k, n in peer_counts.items() if k in BY_NAME)
        console.print(f"luftdatenpumpe: {peer_values:,} values written in {peer_s:.1f} s")
        influx.close()
        server.stop()
        ray.shutdown()

    emit(
        {
            "benchmark": "e2e",
            "records": len(records),
            "readings": len(expected),
            "aircast_seconds": round(aircast_s, 2),
            "aircast_ingest_seconds": round(ingested, 2),
            "peer": "luftdatenpumpe 0.22",
            "peer_seconds": round(peer_s, 2),
            "peer_values_written": peer_values,
            "ratio": round(peer_s / aircast_s, 3),
            "target_ratio": 2.0,
        }
    )


if __name__ == "__main__":
    main()
