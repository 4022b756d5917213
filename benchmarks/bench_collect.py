"""make bench-collect: points/s from Kafka into InfluxDB through the collector (decode,
validate, line protocol, batched writes, offsets committed after each flush) beside a
raw HTTP line-protocol writer posting the same points in the same batch size to the
same InfluxDB, in the same run (the ceiling).

The collector is measured twice: one in-process ``Collector`` (one core), and as
deployed, ``collect.actors`` Ray actors under the supervisor (partitions split between
them). The deployed figure is the one compared. Three rounds; the best of each side.

Last line: one JSON object with both rates and the ratio (target ≥ 0.8).
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console

from benchmarks._common import emit, private_stack

if TYPE_CHECKING:
    from aircast.records import Reading

POINTS = 300_000
BATCH = 5_000
# The best round of each is taken: runs here vary by a third (two cores that InfluxDB
# and the broker share; other work only ever slows a round down).
ROUNDS = 3


def readings(n: int) -> list[Reading]:
    from aircast.records import Reading

    rng = random.Random(3)
    start = int(time.time()) - 20 * 3600
    out = []
    sensors = 2_000
    for i in range(n):
        sensor = i % sensors
        out.append(
            Reading(
                sensor_id=10_000 + sensor,
                sensor_type="SDS011",
                location_id=20_000 + sensor,
                latitude=48.7 + sensor / 1e4,
                longitude=9.1 + sensor / 1e4,
                country_code="DE",
                country="Germany",
                city="Stuttgart",
                measure="P1" if i % 2 else "P2",
                value=round(rng.uniform(1, 80), 2),
                timestamp=start + (i // sensors) * 145,
            )
        )
    return out


def main() -> None:
    import httpx
    import ray

    from actors.collect import Supervisor
    from aircast.collect import Collector
    from aircast.influx import InfluxV1
    from aircast.kafka import ensure_topics, producer

    console = Console(stderr=True)
    with private_stack("kafka", "influxdb", "ray") as base:
        ray.init(address=base.ray.address, log_to_driver=False)
        data = readings(POINTS)
        rates_collect: list[float] = []
        rates_single: list[float] = []
        rates_raw: list[float] = []
        for round_ in range(ROUNDS):
            kafka = base.kafka.model_copy(
                update={
                    "readings_topic": f"bench-readings-{round_}",
                    "aggregates_topic": f"bench-aggs-{round_}",
                    "dead_letter_topic": f"bench-dlq-{round_}",
                    "partitions": 4,
                }
            )
            influx = base.influx.model_copy(
                update={
                    "raw_database": f"bench_raw_{round_}",
                    "aggregates_database": "bench_agg",
                    "predictions_database": "bench_pred",
                }
            )
            collect = base.collect.model_copy(
                update={
                    "batch_size": BATCH,
                    "max_buffered": 4 * BATCH,
                    "linger_ms": 500,
                    "group_id": f"bench-{round_}",
                    "actors": 2,
                }
            )
            settings = base.model_copy(
                update={"kafka": kafka, "influx": influx, "collect": collect}
            )
            ensure_topics(
                kafka, [kafka.readings_topic, kafka.aggregates_topic, kafka.dead_letter_topic]
            )
            with console.status(f"round {round_ + 1}: producing {POINTS:,} readings"):
                p = producer(kafka)
                for r in data:
                    p.send(kafka.readings_topic, key=r.key.encode(), value=r.to_json())
                p.flush()
                p.close()

            # One in-process collector over every partition, into its own database.
            parts = [(kafka.readings_topic, i) for i in range(4)] + [
                (kafka.aggregates_topic, i) for i in range(4)
            ]
            single = settings.model_copy(
                update={
                    "influx": influx.model_copy(update={"raw_database": f"bench_one_{round_}"}),
                    "collect": collect.model_copy(update={"group_id": f"bench-one-{round_}"}),
                }
            )
            collector = Collector(single, parts)
            t0 = time.time()
            stats = collector.run(until_idle_s=2.0)
            # Until InfluxDB acknowledged the last point (not the idle wait that ends it).
            elapsed = stats.last_write_at - t0
            collector.close()
            assert stats.points.get(f"bench_one_{round_}") == POINTS, stats
            rates_single.append(POINTS / elapsed)

            # As deployed: the supervisor and its collector actors.
            supervisor = Supervisor(settings)
            # Started (imports, Kafka and InfluxDB clients) before the clock starts, as
            # the in-process collector is constructed before its clock starts.
            ray.get([a.pid.remote() for a in supervisor.actors])
            t0 = time.time()
            results = supervisor.run(until_idle_s=2.0)
            elapsed = max(r["last_write_at"] for r in results) - t0
            for actor in supervisor.actors:
                assert isinstance(actor, ray.actor.ActorHandle)  # Ray types it as a union
                ray.kill(actor)
            written = sum(r["points"].get(influx.raw_database, 0) for r in results)
            assert written == POINTS, results
            rates_collect.append(POINTS / elapsed)

            # The ceiling: the same points, prebuilt lines, same batch size, raw HTTP.
            lines = [r.line() for r in data]
            with InfluxV1(influx) as client:
                client.create_database(f"bench_ceiling_{round_}")
            auth = (
                influx.username or "",
                influx.password.get_secret_value() if influx.password else "",
            )
            with httpx.Client(base_url=influx.url, auth=auth, timeout=30) as http:
                t0 = time.perf_counter()
                for i in range(0, len(lines), BATCH):
                    response = http.post(
                        "/write",
                        params={"db": f"bench_ceiling_{round_}", "precision": "s"},
                        content="\n".join(lines[i : i + BATCH]).encode(),
                    )
                    response.raise_for_status()
                rates_raw.append(POINTS / (time.perf_counter() - t0))
            console.print(
                f"round {round_ + 1}: collector actors {rates_collect[-1]:,.0f} pts/s, "
                f"one collector {rates_single[-1]:,.0f} pts/s, "
                f"raw writer {rates_raw[-1]:,.0f} pts/s"
            )
        ray.shutdown()
    best_c, best_r = max(rates_collect), max(rates_raw)
    emit(
        {
            "benchmark": "collect",
            "points": POINTS,
            "batch": BATCH,
            "actors": 2,
            "collector_points_per_s": round(best_c),
            "single_collector_points_per_s": round(max(rates_single)),
            "raw_writer_points_per_s": round(best_r),
            "ratio": round(best_c / best_r, 3),
            "round_ratios": [
                round(c / r, 3) for c, r in zip(rates_collect, rates_raw, strict=True)
            ],
            "target_ratio": 0.8,
        }
    )


if __name__ == "__main__":
    main()
