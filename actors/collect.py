"""Collection on Ray actors: a supervisor assigns the readings and aggregates
partitions to N collector actors, each running ``aircast.collect.Collector``.

Run it:

* ``aircast collect`` on the local stack;
* ``ray job submit --working-dir . -- python -m actors.collect`` on a cluster.

Partitions are assigned explicitly (round-robin), not by consumer-group rebalancing:
the assignment is stable, and a collector actor that dies (kill -9, OOM, node loss)
is restarted by Ray with the same partitions and resumes from the committed offsets
(offsets are committed only after InfluxDB acknowledged the batch). The supervisor
re-issues its ``run`` call and logs the restart.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from typing import Any

import ray
from ray.util import metrics

from aircast import options, telemetry
from aircast.collect import Collector
from aircast.kafka import admin, ensure_topics
from aircast.settings import Settings, load_settings

log = logging.getLogger(__name__)


class CollectorActor:
    """One collector's Ray actor (made through :data:`RemoteCollector`); the methods
    marked ``@ray.method`` are what its handle offers."""

    def __init__(self, settings: Settings, index: int, partitions: list[tuple[str, int]]) -> None:
        logging.basicConfig(
            level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
        )
        self.index = index
        self.collector = Collector(settings, partitions)
        self.points = metrics.Counter(
            telemetry.COLLECT_POINTS.name,
            description=telemetry.COLLECT_POINTS.description,
            tag_keys=telemetry.COLLECT_POINTS.tags,
        )
        self.lag = metrics.Gauge(
            telemetry.COLLECT_LAG.name,
            description=telemetry.COLLECT_LAG.description,
            tag_keys=telemetry.COLLECT_LAG.tags,
        )
        self.dead = metrics.Counter(
            telemetry.DEAD_LETTERS.name,
            description=telemetry.DEAD_LETTERS.description,
            tag_keys=telemetry.DEAD_LETTERS.tags,
        )
        self._reported: dict[str, int] = {}
        self._reported_rejected: dict[str, int] = {}
        self._lock = threading.Lock()
        log.info("collector ready index=%d partitions=%s pid=%d", index, partitions, os.getpid())

    @ray.method
    def pid(self) -> int:
        return os.getpid()

    @ray.method
    def run(self, until_idle_s: float | None = None) -> dict[str, Any]:
        self.collector.stopping = False
        self.collector.run(until_idle_s=until_idle_s, report=self._report)
        return self._stats()

    def _report(self) -> None:
        c = self.collector
        with self._lock:
            for db, n in list(c.stats.points.items()):  # the writer thread adds keys
                new = n - self._reported.get(db, 0)
                if new > 0:
                    self.points.inc(new, {"database": db})
                self._reported[db] = n
            for reason, n in list(c.stats.rejected.items()):
                new = n - self._reported_rejected.get(reason, 0)
                if new > 0:
                    self.dead.inc(new, {"stage": "collect", "reason": reason})
                self._reported_rejected[reason] = n
            for topic, behind in c.update_lag().items():
                self.lag.set(behind, {"topic": topic})

    @ray.method
    def stop(self) -> None:
        self.collector.stopping = True

    @ray.method
    def stats(self) -> dict[str, Any]:
        return self._stats()

    def _stats(self) -> dict[str, Any]:
        s = self.collector.stats
        return {
            "index": self.index,
            "messages": s.messages,
            "points": dict(s.points),
            "rejected": dict(s.rejected),
            "flushes": s.flushes,
            "max_buffered": s.max_buffered,
            "storage_failures": s.storage_failures,
            "refetched": s.refetched,
            "lag": dict(s.lag),
            "last_write_at": s.last_write_at,
            "pid": os.getpid(),
        }


# The actor class Ray makes of CollectorActor (its name in the dashboard stays
# CollectorActor). max_concurrency: stop() and stats() are served while run() loops.
RemoteCollector = ray.remote(CollectorActor).options(
    max_restarts=-1, max_task_retries=0, num_cpus=0.5, max_concurrency=4
)


def assign_partitions(settings: Settings, actors: int) -> list[list[tuple[str, int]]]:
    """Round-robin of every readings and aggregates partition over ``actors``."""
    client = admin(settings.kafka)
    try:
        topics = [settings.kafka.readings_topic, settings.kafka.aggregates_topic]
        described = client.describe_topics(topics)
    finally:
        client.close()
    # kafka-python 3 names them name/partition_index (older: topic/partition).
    partitions = sorted(
        (t.get("name") or t["topic"], p.get("partition_index", p.get("partition")))
        for t in described
        for p in t["partitions"]
    )
    shares: list[list[tuple[str, int]]] = [[] for _ in range(actors)]
    for i, tp in enumerate(partitions):
        shares[i % actors].append(tp)
    return [s for s in shares if s]


class Supervisor:
    """Starts the collector actors and keeps their ``run`` loops going."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        ensure_topics(settings.kafka)
        self.assignment = assign_partitions(settings, settings.collect.actors)
        self.actors = [
            RemoteCollector.remote(settings, i, parts) for i, parts in enumerate(self.assignment)
        ]
        self.restarts = 0

    def run(self, *, until_idle_s: float | None = None) -> list[dict[str, Any]]:
        running = {a.run.remote(until_idle_s): i for i, a in enumerate(self.actors)}
        results: dict[int, dict[str, Any]] = {}
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            index = running.pop(done[0])
            try:
                results[index] = ray.get(done[0])
            except ray.exceptions.RayActorError as exc:
                # Ray restarts the actor (same partitions); resume from committed offsets.
                self.restarts += 1
                log.warning(
                    "collector died index=%d restarting restarts=%d error=%s",
                    index,
                    self.restarts,
                    type(exc).__name__,
                )
                running[self.actors[index].run.remote(until_idle_s)] = index
        return [results[i] for i in sorted(results)]

    def stop(self) -> None:
        ray.get([a.stop.remote() for a in self.actors])


def run(settings: Settings, *, until_idle_s: float | None = None) -> int:
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if not ray.is_initialized():
        ray.init(
            address=settings.ray.address, namespace=settings.ray.namespace, log_to_driver=False
        )
    supervisor = Supervisor(settings)
    log.info(
        "collectors started actors=%d assignment=%s", len(supervisor.actors), supervisor.assignment
    )
    try:
        for stats in supervisor.run(until_idle_s=until_idle_s):
            log.info("collector finished %s", stats)
    except KeyboardInterrupt:
        supervisor.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actors.collect")
    options.add_config(parser)
    options.add_collect(parser)
    args = parser.parse_args(argv)
    settings = options.collect_settings(load_settings(args.config), args)
    return run(settings, until_idle_s=args.until_idle)


if __name__ == "__main__":
    raise SystemExit(main())
