"""Small test helpers shared by the test modules (real broker, no fakes)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from kafka import KafkaConsumer, TopicPartition
from kafka.net.compat import KafkaNetClient
from kafka.protocol.consumer import FetchRequest
from kafka.record.memory_records import MemoryRecords

from aircast.influx import InfluxV1
from aircast.kafka import connection_options
from aircast.records import AGGREGATE_WINDOW_S, Aggregate
from aircast.settings import KafkaSettings, Settings

from .conftest import REPO

log = logging.getLogger(__name__)


def read_topic(
    settings: KafkaSettings,
    topic: str,
    *,
    expect: int | None = None,
    timeout_s: float = 60.0,
    quiet_s: float = 2.0,
    committed_only: bool = False,
) -> list[tuple[bytes | None, bytes]]:
    """Every (key, value) of ``topic`` from the beginning, without a consumer group.

    Stops when ``expect`` messages arrived (then waits ``quiet_s`` more to catch any
    extra: a test must see duplicates), or when nothing new came for ``quiet_s`` after
    at least one poll, or at ``timeout_s``.

    A read that falls silent short of ``expect`` for ``STALL_S`` is started again from
    the beginning with a new consumer (its messages replace the first read's, so
    nothing is counted twice), until ``timeout_s``; each restart is logged with where
    each partition's read stood, which tells a reader that skipped (position past the
    messages it returned) from a broker that holds fewer. A read that stalls short of
    acknowledged messages says nothing about the stage under test; a broker that lost
    messages still fails it, since the read from the beginning comes up short too.
    """
    deadline = time.monotonic() + timeout_s
    attempt = 0
    while True:
        attempt += 1
        out, stalled, where = _read_once(settings, topic, expect, deadline, quiet_s, committed_only)
        if expect is None or len(out) >= expect:
            return out
        log.warning(
            "read_topic %s (read %d): %d of %d messages%s; per partition (messages read, "
            "position, fetched high watermark): %s",
            topic,
            attempt,
            len(out),
            expect,
            f", silent for {STALL_S:.0f} s: reading again" if stalled else "",
            where,
        )
        if not stalled:
            return out


STALL_S = 8.0  # a read short of what is expected and silent this long starts over


def _read_once(
    settings: KafkaSettings,
    topic: str,
    expect: int | None,
    deadline: float,
    quiet_s: float,
    committed_only: bool,
) -> tuple[list[tuple[bytes | None, bytes]], bool, dict[int, tuple[int, int | None, int | None]]]:
    """One read from the beginning: (messages, stalled short of ``expect``, per
    partition (messages read, position, high watermark))."""
    consumer = KafkaConsumer(
        **connection_options(settings),
        enable_auto_commit=False,
        # A reset goes back to the beginning: kafka-python's default jumps to the end
        # and would skip messages without a word.
        auto_offset_reset="earliest",
        isolation_level="read_committed" if committed_only else "read_uncommitted",
    )
    try:
        partitions: set[int] | None = None
        while partitions is None and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic)
            if partitions is None:
                time.sleep(0.2)
        if not partitions:
            return [], False, {}
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[tuple[bytes | None, bytes]] = []
        read = dict.fromkeys(partitions, 0)
        last_new = time.monotonic()
        stalled = False
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=300)
            got = [(r.key, r.value) for records in batch.values() for r in records]
            for tp, records in batch.items():
                read[tp.partition] += len(records)
            quiet = time.monotonic() - last_new
            if got:
                out.extend(got)
                last_new = time.monotonic()
            elif expect is None or len(out) >= expect:
                if quiet >= quiet_s:
                    break
            elif quiet >= STALL_S and time.monotonic() + STALL_S < deadline:
                stalled = True
                break
        # Bounded: this runs when a read already came up short, maybe on a broker away.
        where = {
            tp.partition: (
                read[tp.partition],
                consumer.position(tp, timeout_ms=2_000),
                consumer.highwater(tp),
            )
            for tp in tps
        }
        return out, stalled, where
    finally:
        consumer.close()


@dataclass
class CommittedLog:
    """A topic as read_committed means it, decided from the log's own control markers."""

    committed: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    aborted: int = 0  # records of transactions that ended in an abort marker
    open: int = 0  # records of transactions with no marker yet
    transactions: dict[str, int] = field(default_factory=lambda: {"commit": 0, "abort": 0})


_FETCH_BYTES = 32 * 1024 * 1024
# A control record's key: version (int16), then type (int16): 0 abort, 1 commit.
_ABORT, _COMMIT = 0, 1


def read_committed_by_markers(settings: KafkaSettings, topic: str) -> CommittedLog:
    """Every record of ``topic`` from the beginning, kept only if its transaction's
    commit marker follows it in its partition (non-transactional records are kept).

    This reads the raw record batches (isolation read_uncommitted, so the broker hides
    nothing and filters nothing) and applies the markers itself, so it does not depend
    on the broker's list of aborted transactions in a Fetch response: a broker that
    leaves that list empty (tansu) still gets the committed view Kafka defines. A record
    counted twice here was written and committed twice."""
    client = KafkaNetClient(**connection_options(settings))
    out = CommittedLog()
    try:
        client.check_version()
        client.poll(future=client.cluster.request_update(), timeout_ms=10_000)
        partitions = sorted(client.cluster.partitions_for_topic(topic) or ())
        assert partitions, f"topic {topic} has no partitions in the broker's metadata"
        for partition in partitions:
            node = client.cluster.leader_for_partition(TopicPartition(topic, partition))
            pending: dict[int, list[tuple[bytes | None, bytes]]] = {}
            offset, end = 0, None
            while end is None or offset < end:
                request = FetchRequest(
                    max_wait_ms=100,
                    min_bytes=1,
                    max_bytes=_FETCH_BYTES,
                    isolation_level=0,
                    topics=[
                        FetchRequest.FetchTopic(
                            topic=topic,
                            partitions=[
                                FetchRequest.FetchTopic.FetchPartition(
                                    partition=partition,
                                    fetch_offset=offset,
                                    partition_max_bytes=_FETCH_BYTES,
                                )
                            ],
                        )
                    ],
                    min_version=4,
                    max_version=10,
                )
                response = client.send_and_receive(node, request, timeout_ms=30_000)
                data = response.responses[0].partitions[0]
                assert data.error_code == 0, (topic, partition, data.error_code)
                end = data.high_watermark
                records = MemoryRecords(data.records)
                start = offset
                while (batch := records.next_batch()) is not None:
                    offset = max(offset, batch.next_offset)
                    if batch.base_offset + batch.last_offset_delta < start:
                        continue
                    if batch.is_control_batch:
                        for marker in batch:
                            kind = int.from_bytes(marker.key[2:4], "big")
                            kept = pending.pop(batch.producer_id, [])
                            if kind == _COMMIT:
                                out.committed.extend(kept)
                                out.transactions["commit"] += 1
                            elif kind == _ABORT:
                                out.aborted += len(kept)
                                out.transactions["abort"] += 1
                        continue
                    rows = [(r.key, r.value) for r in batch if r.offset >= start]
                    if batch.is_transactional:
                        pending.setdefault(batch.producer_id, []).extend(rows)
                    else:
                        out.committed.extend(rows)
                if offset == start:
                    break  # nothing more below the high watermark (a compacted gap)
            out.open += sum(len(rows) for rows in pending.values())
        return out
    finally:
        client.close()


class AircastRun:
    """`aircast run` (what `make run` runs) as a child process, its output collected
    by a reader thread; for the tests that drive the whole thing. ``argv`` replaces the
    command (``make run``); it runs in a session of its own, and Ctrl-C goes to that
    whole process group, as a terminal sends it."""

    def __init__(self, env: dict[str, str], *args: str, argv: list[str] | None = None) -> None:
        self.proc = subprocess.Popen(
            argv or [sys.executable, "-m", "aircast_cli", "run", *args],
            cwd=REPO,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        self.lines: list[str] = []
        stdout = self.proc.stdout
        self._reader = threading.Thread(
            target=lambda: self.lines.extend(iter(stdout.readline, "")), daemon=True
        )
        self._reader.start()

    @property
    def out(self) -> str:
        return "".join(self.lines)

    def wait_running(self, timeout_s: float = 420) -> None:
        """Until it printed its URLs and "press Ctrl-C"; fails if it ended or hung."""
        deadline = time.monotonic() + timeout_s
        while not any("Ctrl-C" in line for line in self.lines):
            assert self.proc.poll() is None, "aircast run ended early:\n" + self.out
            assert time.monotonic() < deadline, "aircast run not ready:\n" + self.out
            time.sleep(1)

    def stop(self, timeout_s: float = 180) -> int:
        """Ctrl-C, as a user would; the exit code (killed if it does not stop)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def _succeeded(
    argv: list[str], env: dict[str, str] | None, timeout: float
) -> subprocess.CompletedProcess[str]:
    """``argv`` run from the checkout with the user's environment plus ``env``; a
    failure shows its output."""
    done = subprocess.run(
        argv,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done


def run_command(argv: list[str], env: dict[str, str], timeout: float = 600) -> str:
    """``argv`` as a user types it, with ``env`` added; its stdout (the summary line)."""
    return _succeeded(argv, env, timeout).stdout


def shell(argv: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """``argv`` as a user types it, with ``env`` added; everything it printed."""
    done = _succeeded(argv, env, timeout)
    return done.stdout + done.stderr


def ray_job_submit(
    settings: Settings, *entrypoint: str, env: dict[str, str] | None = None, timeout: float = 600
) -> str:
    """``ray job submit -- <entrypoint>`` as the README gives it, from the checkout, on
    the stack's dashboard; ``env`` reaches the job as its runtime environment's
    variables. The job's output (Ray prints the driver's log), or a failure showing it."""
    runtime = ["--runtime-env-json", json.dumps({"env_vars": env})] if env else []
    ray = str(Path(sys.executable).parent / "ray")
    address = ["--address", settings.ray.dashboard_url]
    return shell([ray, "job", "submit", *address, *runtime, "--", *entrypoint], timeout=timeout)


def last_json(output: str) -> dict[str, object]:
    """The last line of ``output`` that is a JSON object (a command's summary)."""
    line = [x for x in output.splitlines() if x.startswith('{"')][-1]
    result: dict[str, object] = json.loads(line)
    return result


def seed_daily_cycles(settings: Settings, sensors: Sequence[int], start: int, steps: int) -> None:
    """``steps`` 10-minute temperature aggregates of each sensor from ``start``: a daily
    cycle in phase with the clock plus noise (learnable from the time of day), written
    to ``settings.influx.aggregates_database``."""
    lines = []
    for sid in sensors:
        rng = np.random.default_rng(sid)
        times = start + np.arange(steps) * AGGREGATE_WINDOW_S
        values = 15.0 + 6.0 * np.sin(2 * np.pi * (times % 86_400) / 86_400)
        values += rng.normal(0.0, 0.3, steps)
        lines += [
            Aggregate(
                sid, "DHT22", sid, 57.1, -2.1, "GB", "United Kingdom", "Aberdeen",
                "temperature", int(t), int(t) + AGGREGATE_WINDOW_S, float(v), float(v),
                float(v), 1,
            ).line()
            for t, v in zip(times, values, strict=True)
        ]  # fmt: skip
    with InfluxV1(settings.influx) as influx:
        influx.ensure_databases()
        influx.write(lines, settings.influx.aggregates_database, precision="s")
