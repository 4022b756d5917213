"""make bench-ingest: a 40,000-record simulator snapshot fetched over HTTP → parsed →
deduped → geocoded → produced and acknowledged by the broker, on Ray scraper actors;
beside it, in the same run and from one process, the same payloads sent by a raw
kafka-python producer (the ceiling the ingestion issue set) and by a raw producer of
the client the scrapers use (librdkafka, confluent-kafka). Also: cold
and warm geocoding of the snapshot's locations.

Last line: one JSON object with records/s of each, ratio = aircast / raw kafka-python
producer (target ≥ 0.5), and ratio_librdkafka = aircast / raw librdkafka producer: how
far the ingest's own work (parse, dedupe, geocode; Python) is from the client's.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console

from benchmarks._common import emit, private_stack

RECORDS = 40_000
SENSORS = 19_400  # ≈ 2.06 records per sensor per 5-minute window
ROUNDS = 3


def main() -> None:
    import confluent_kafka
    import ray

    from actors.ingest import Coordinator
    from aircast.cache import redis_client
    from aircast.errors import InvalidRecord
    from aircast.geocode import CachedGeocoder, OfflineGeocoder
    from aircast.kafka import ensure_topics, producer, producer_options
    from aircast.records import parse_feed_record
    from aircast.simulator import Network, SimulatorServer
    from aircast.sources import HttpSource

    console = Console(stderr=True)
    with private_stack("redis", "kafka", "ray") as base:
        ray.init(address=base.ray.address, log_to_driver=False)
        net = Network(SENSORS, seed=5)
        windows = [1_764_000_000 + 300 * i for i in range(ROUNDS)]
        current = [windows[0]]
        server = SimulatorServer(net, clock=lambda: current[0]).start()
        with console.status("generating snapshots"):
            for w in windows:
                server._server.body(w)  # generated once, before timing (not measured)
            current[0] = windows[0]
        aircast_rates, raw_rates, kafka_python_rates, counts = [], [], [], []
        for i, w in enumerate(windows):
            settings = base.model_copy(
                update={
                    "kafka": base.kafka.model_copy(
                        update={
                            "raw_topic": f"bench-raw-{i}",
                            "dead_letter_topic": f"bench-dlq-{i}",
                        }
                    ),
                    "redis": base.redis.model_copy(update={"key_prefix": f"bench{i}:"}),
                }
            )
            ensure_topics(
                settings.kafka,
                [
                    settings.kafka.raw_topic,
                    settings.kafka.dead_letter_topic,
                    f"bench-rawp-{i}",
                    f"bench-rawk-{i}",
                ],
            )
            coordinator = Coordinator(settings)
            current[0] = w
            server._server.body(w)
            source = HttpSource(server.url, name="simulator")
            t0 = time.perf_counter()
            snapshot = source.fetch()
            assert snapshot is not None
            records = list(snapshot.records)  # the ceilings' payloads (ingest takes them)
            result = coordinator.ingest(snapshot)
            elapsed = time.perf_counter() - t0
            n = len(records)
            aircast_rates.append(n / elapsed)
            counts.append(result.to_dict())
            for a in coordinator.scrapers:
                assert isinstance(a, ray.actor.ActorHandle)  # Ray types it as a union
                ray.kill(a)

            # The ceilings: the same payloads (records as the scrapers produce them) from
            # one raw producer of the scrapers' client, to its own topic, acknowledged;
            # and from kafka-python's (the issue's ceiling, the scrapers' client before).
            payloads = [
                (str(r["sensor"]["id"]).encode(), json.dumps(r).encode())
                for r in records
                if isinstance(r, dict)
            ]
            rawp = confluent_kafka.Producer(producer_options(settings.kafka))
            t0 = time.perf_counter()
            for k, v in payloads:
                while True:
                    try:
                        rawp.produce(f"bench-rawp-{i}", v, k)
                        break
                    except BufferError:
                        rawp.poll(0.05)
            if rawp.flush(60):
                raise SystemExit("the raw librdkafka producer was not acknowledged")
            raw_rates.append(len(payloads) / (time.perf_counter() - t0))
            p = producer(settings.kafka)
            t0 = time.perf_counter()
            for k, v in payloads:
                p.send(f"bench-rawk-{i}", key=k, value=v)
            p.flush()
            kafka_python_rates.append(len(payloads) / (time.perf_counter() - t0))
            p.close()
            console.print(
                f"round {i + 1}: aircast {aircast_rates[-1]:,.0f} rec/s, "
                f"raw librdkafka producer {raw_rates[-1]:,.0f} rec/s, raw kafka-python "
                f"producer {kafka_python_rates[-1]:,.0f} rec/s ({n:,} records)"
            )

        # Geocoding a network-size set of locations, cold (empty cache) and warm.
        snap = net.snapshot(windows[0])
        locations = {}
        for raw in snap:
            try:
                rec = parse_feed_record(raw)
            except InvalidRecord:
                continue
            locations[rec.location_id] = (rec.latitude, rec.longitude)
        offline = OfflineGeocoder()
        client = redis_client(base.redis)
        cached = CachedGeocoder(
            offline, client, base.redis.model_copy(update={"key_prefix": "bench-geo:"}), 3600
        )
        t0 = time.perf_counter()
        offline.places(list(locations.values()))
        geocode_raw = time.perf_counter() - t0
        t0 = time.perf_counter()
        cached.places(locations)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        cached.places(locations)
        warm = time.perf_counter() - t0
        server.stop()
        ray.shutdown()

    best_aircast, best_raw = max(aircast_rates), max(raw_rates)
    best_kafka_python = max(kafka_python_rates)
    emit(
        {
            "benchmark": "ingest",
            "records_per_snapshot": counts[0]["records"],
            "produced": counts[0]["produced"],
            "aircast_records_per_s": round(best_aircast),
            "raw_producer": "kafka-python",
            "raw_producer_records_per_s": round(best_kafka_python),
            "ratio": round(best_aircast / best_kafka_python, 3),
            "raw_librdkafka_records_per_s": round(best_raw),
            "ratio_librdkafka": round(best_aircast / best_raw, 3),
            "target_ratio": 0.5,
            "geocode_locations": len(locations),
            "geocode_offline_s": round(geocode_raw, 3),
            "geocode_cold_cached_s": round(cold, 3),
            "geocode_warm_cached_s": round(warm, 3),
            "scrapers": 4,
            "rounds": ROUNDS,
        }
    )


if __name__ == "__main__":
    main()
