"""Small test helpers shared by the test modules (real broker, no fakes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from kafka import KafkaConsumer, TopicPartition

from aircast.kafka import connection_options
from aircast.settings import KafkaSettings

from .conftest import REPO


def read_topic(
    settings: KafkaSettings,
    topic: str,
    *,
    expect: int | None = None,
    timeout_s: float = 30.0,
    quiet_s: float = 2.0,
    committed_only: bool = False,
) -> list[tuple[bytes | None, bytes]]:
    """Every (key, value) of ``topic`` from the beginning, without a consumer group.

    Stops when ``expect`` messages arrived (then waits ``quiet_s`` more to catch any
    extra: a test must see duplicates), or when nothing new came for ``quiet_s`` after
    at least one poll, or at ``timeout_s``.
    """
    consumer = KafkaConsumer(
        **connection_options(settings),
        enable_auto_commit=False,
        isolation_level="read_committed" if committed_only else "read_uncommitted",
    )
    try:
        deadline = time.monotonic() + timeout_s
        partitions: set[int] | None = None
        while partitions is None and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic)
            if partitions is None:
                time.sleep(0.2)
        if not partitions:
            return []
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[tuple[bytes | None, bytes]] = []
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=300)
            got = [(r.key, r.value) for records in batch.values() for r in records]
            if got:
                out.extend(got)
                last_new = time.monotonic()
            elif (expect is None or len(out) >= expect) and (
                time.monotonic() - last_new >= quiet_s
            ):
                break
        return out
    finally:
        consumer.close()


class AircastRun:
    """`aircast run` (what `make run` runs) as a child process, its output collected
    by a reader thread; for the tests that drive the whole thing."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aircast.cli", "run", *args],
            cwd=REPO,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
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
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode
