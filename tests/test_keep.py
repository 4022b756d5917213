"""`aircast keep` against a real Ray head (the session stack's): it submits the two
streaming stages, resubmits the one whose driver was killed -9 (and the stage goes on
producing), and a keeper killed and started again adopts the running jobs instead of
submitting second copies. What Kubernetes runs as the keeper Deployment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from aircast.kafka import ensure_topics
from aircast.settings import Settings

from .conftest import REPO, unique
from .helpers import read_topic

AIRCAST = str(Path(sys.executable).parent / "aircast")


def _jobs(settings: Settings, tag: str) -> dict[str, list[tuple[str, str]]]:
    """This test's jobs by stage: (submission id, status), oldest first."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(settings.ray.dashboard_url)
    out: dict[str, list[tuple[str, str]]] = {"ingest": [], "collect": []}
    for job in sorted(client.list_jobs(), key=lambda j: j.start_time or 0):
        name = (job.metadata or {}).get("aircast")
        env = ((job.runtime_env or {}).get("env_vars") or {}).get("AIRCAST_KAFKA__RAW_TOPIC")
        if name in out and env == tag and job.submission_id:
            out[name].append((job.submission_id, str(job.status.value)))
    return out


def _wait(what: str, check: object, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(1)


def _driver_pid(raw_topic: str) -> int:
    """The ingest job's driver: the python process running actors.ingest with this
    test's raw topic in its environment."""
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if cmd[-2:] == ["-m", "actors.ingest"]:
            try:
                if proc.environ().get("AIRCAST_KAFKA__RAW_TOPIC") == raw_topic:
                    return proc.pid
            except psutil.Error:
                continue
    raise AssertionError("no ingest driver of this test")


class Keeper:
    def __init__(self, settings: Settings, stack_dir: Path, raw_topic: str, log: Path) -> None:
        stage = {
            "AIRCAST_KAFKA__RAW_TOPIC": raw_topic,
            "AIRCAST_KAFKA__READINGS_TOPIC": unique("readings"),
            "AIRCAST_KAFKA__AGGREGATES_TOPIC": unique("aggs"),
            "AIRCAST_KAFKA__DEAD_LETTER_TOPIC": unique("dlq"),
            "AIRCAST_REDIS__KEY_PREFIX": unique("keep") + ":",
        }
        ingest = {
            "AIRCAST_INGEST__SOURCE": "simulator",
            "AIRCAST_INGEST__SIMULATOR_SENSORS": "30",
            "AIRCAST_INGEST__SIMULATOR_HISTORY_H": "0",
            "AIRCAST_INGEST__SIMULATOR_REFRESH_S": "5",
            "AIRCAST_INGEST__INTERVAL_S": "5",
            "AIRCAST_INGEST__SCRAPERS": "1",
        }
        self.argv = [AIRCAST, "keep", "--every", "1", "--python", sys.executable]
        for name, value in {**stage, **ingest}.items():
            self.argv += ["--env", f"ingest:{name}={value}"]
        for name, value in {**stage, "AIRCAST_COLLECT__ACTORS": "1"}.items():
            self.argv += ["--env", f"collect:{name}={value}"]
        self.env = {**os.environ, "AIRCAST_STACK__STATE_DIR": str(stack_dir.resolve())}
        self.raw_topic = raw_topic
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture()
def keeper(stack_settings: Settings, stack_dir: Path, tmp_path: Path) -> Iterator[Keeper]:
    raw = unique("raw")
    ensure_topics(stack_settings.kafka.model_copy(update={"raw_topic": raw}), [raw])
    k = Keeper(stack_settings, stack_dir, raw, tmp_path / "keeper.log")
    try:
        yield k
    finally:
        if k.proc is not None and k.proc.poll() is None:
            k.proc.send_signal(signal.SIGTERM)
            k.proc.wait(timeout=60)
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(stack_settings.ray.dashboard_url)
        for jobs in _jobs(stack_settings, raw).values():
            for job_id, _ in jobs:
                try:
                    client.stop_job(job_id)
                except RuntimeError:
                    pass


def test_the_keeper_resubmits_a_failed_stage_and_a_new_keeper_adopts_the_jobs(
    stack_settings: Settings, keeper: Keeper
) -> None:
    settings = stack_settings
    raw = keeper.raw_topic
    keeper.start()
    _wait(
        "both stages RUNNING",
        lambda: all(jobs and jobs[-1][1] == "RUNNING" for jobs in _jobs(settings, raw).values()),
    )
    produced_before = len(read_topic(settings.kafka, raw, timeout_s=60, quiet_s=3))

    # The ingest driver killed -9, while the job runs: FAILED, then resubmitted.
    os.kill(_driver_pid(raw), signal.SIGKILL)
    _wait(
        "ingest resubmitted and RUNNING",
        lambda: (
            len(_jobs(settings, raw)["ingest"]) == 2
            and _jobs(settings, raw)["ingest"][0][1] == "FAILED"
            and _jobs(settings, raw)["ingest"][1][1] == "RUNNING"
        ),
    )
    assert "ray job ingest failed: resubmitted" in keeper.text()
    # The resubmitted stage goes on: new snapshots reach the raw topic.
    _wait(
        "new records after the resubmission",
        lambda: len(read_topic(settings.kafka, raw, timeout_s=30, quiet_s=2)) > produced_before,
        timeout_s=120,
    )

    # The keeper itself killed -9 and started again: it adopts, submits nothing.
    assert keeper.proc is not None
    keeper.proc.kill()
    keeper.proc.wait()
    before = _jobs(settings, raw)
    keeper.start()
    _wait("adopted", lambda: keeper.text().count("ray job adopted") == 2, timeout_s=60)
    time.sleep(3)  # a few checks of the new keeper
    after = _jobs(settings, raw)
    assert [j for j, _ in after["ingest"]] == [j for j, _ in before["ingest"]], after
    assert [j for j, _ in after["collect"]] == [j for j, _ in before["collect"]], after
    assert after["ingest"][-1][1] == "RUNNING" and after["collect"][-1][1] == "RUNNING"

    # Stopping the keeper leaves the jobs running.
    keeper.proc.send_signal(signal.SIGTERM)
    assert keeper.proc.wait(timeout=60) == 0
    assert "the jobs keep running" in keeper.text()
    assert _jobs(settings, raw)["collect"][-1][1] == "RUNNING"


def test_the_keeper_waits_for_a_dashboard_that_does_not_answer(tmp_path: Path) -> None:
    """A keeper started before its cluster's head (or while the head restarts) keeps
    checking and stays alive for its liveness probe, instead of crashing into a restart
    loop; SIGTERM still ends it cleanly."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    alive = tmp_path / "alive"
    log = tmp_path / "keeper.log"
    env = {
        **os.environ,
        "AIRCAST_RAY__DASHBOARD_URL": f"http://127.0.0.1:{port}",
        "AIRCAST_STACK__STATE_DIR": str(tmp_path / "no-stack"),
    }
    argv = [AIRCAST, "keep", "--every", "0.5", "--alive-file", str(alive)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait("two failed checks", lambda: log.read_text().count("keeper check failed") >= 2, 90)
        first = alive.stat().st_mtime
        _wait("the alive file touched again", lambda: alive.stat().st_mtime > first, 30)
        assert proc.poll() is None, log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, log.read_text()
    assert f"url=http://127.0.0.1:{port}" in log.read_text()
