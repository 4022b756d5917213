"""`aircast run` (what `make run` runs) end to end: the whole stack, the Flink job, the
ingest and collect Ray jobs and the Serve app.

* simulator readings reach InfluxDB and the HTTP API;
* conservation under faults: while snapshots stream, one drill each — kill -9 a scraper
  actor, the Flink job's Python task process, a collector actor; kill influxd and
  redis-server (the stack supervisor restarts them) — and afterwards ``aircast audit``
  for the drill's span shows zero readings lost, zero written twice and every rejected
  value dead-lettered with its reason; the raw topic holds every record the ingest job
  reported producing;
* a job that failed (its driver killed -9) is resubmitted by `aircast run`, and the
  audit of the span again shows nothing lost or doubled;
* the Ray head restarted (its GCS killed -9): `aircast run` lives on, resubmits the jobs
  and deploys the Serve app again, and the audit shows nothing lost or doubled;
* Ctrl-C leaves no process behind.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from aircast.audit import Audit, run_audit
from aircast.localhost import free_port
from aircast.settings import Settings, StackSettings
from aircast.simulator import SNAPSHOT_WINDOW_S
from aircast_cli.stack import control
from aircast_cli.stack.services import ray_job_drivers

from . import oracle
from .conftest import ANY_PORT_ENV
from .helpers import AircastRun

pytestmark = [pytest.mark.slow, pytest.mark.flink]

# A snapshot every 5 s. A drill's span is whole snapshots: the one it kills in, one while
# the victim restarts, one after. So the cadence sets most of each drill's length.
INTERVAL_S = 5
SNAPSHOT = re.compile(r"snapshot ingested source=\S+ records=(\d+) produced=(\d+)")


@dataclass
class Run:
    app: AircastRun
    state: Path
    settings: Settings


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    state = tmp_path_factory.mktemp("run") / "state"
    app = AircastRun(
        {
            "AIRCAST_STACK__STATE_DIR": str(state),
            **ANY_PORT_ENV,
            "AIRCAST_SERVE__PORT": str(free_port()),
            "AIRCAST_INGEST__SOURCE": "simulator",
            "AIRCAST_INGEST__SIMULATOR_SENSORS": "300",
            "AIRCAST_INGEST__SIMULATOR_REFRESH_S": str(INTERVAL_S),
            "AIRCAST_INGEST__INTERVAL_S": str(INTERVAL_S),
            "AIRCAST_INGEST__SCRAPERS": "2",
            # The drills audit what streamed; test_newcomer covers the seeded history.
            "AIRCAST_INGEST__SIMULATOR_HISTORY_H": "0",
        },
        "--status-every",
        "10",
    )
    try:
        app.wait_running()
        settings = control.load_stack_settings(
            Settings(stack=StackSettings(state_dir=state)), state.resolve()
        )
        yield Run(app, state, settings)
    finally:
        app.stop()


def test_readings_reach_influxdb_and_the_api(run: Run) -> None:
    settings = run.settings
    report = control.status(settings)
    unhealthy = {k: v for k, v in report.items() if not v["healthy"]}
    assert not unhealthy, unhealthy
    assert set(report) == {"redis", "kafka", "influxdb", "ray", "flink"}

    # Every reading the first snapshots give, judged by the independent oracle, reaches
    # InfluxDB with its value; the API lists every sensor they came from.
    _after_next_snapshot(settings, 0)
    want = oracle.expected(oracle.raw_records(settings, 0, time.time()))
    assert len(want) > 300, len(want)  # 300 simulated sensors, most with 2+ values
    deadline = time.monotonic() + 180
    while True:
        have = oracle.stored(settings, want)
        missing = [k for k in want if not set(have.get(k, ())) & want[k]]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert missing == [], (len(missing), len(want), missing[:10], run.app.out[-2000:])

    base = next(line.split("│")[2].strip() for line in run.app.lines if "live map" in line)
    base = base.removesuffix("/ui/")
    sources = {sensor for _, sensor, _ in want}
    deadline = time.monotonic() + 60  # the listing is cached for serve.sensors_cache_s
    while True:
        body = httpx.get(f"{base}/sensors", timeout=30).json()
        unlisted = sources - {s["id"] for s in body["sensors"]}
        if not unlisted or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert unlisted == set(), (len(unlisted), len(sources), sorted(unlisted)[:10])
    assert any("ray job: ingest" in line for line in run.app.lines)


# -- conservation under faults ---------------------------------------------------------


def _ingest_log(settings: Settings) -> str:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(settings.ray.dashboard_url)
    jobs = [j for j in client.list_jobs() if "actors.ingest" in j.entrypoint]
    assert jobs, "no ingest job"
    latest = max(jobs, key=lambda j: j.start_time or 0)
    assert latest.submission_id is not None
    return client.get_job_logs(latest.submission_id)


def _snapshots(settings: Settings) -> list[int]:
    """``produced`` of every snapshot the ingest job reported, in order."""
    return [int(m.group(2)) for m in SNAPSHOT.finditer(_ingest_log(settings))]


def _after_next_snapshot(settings: Settings, seen: int, timeout_s: float = 90) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while True:
        snaps = _snapshots(settings)
        if len(snaps) > seen:
            return snaps
        assert time.monotonic() < deadline, "no snapshot ingested in time"
        time.sleep(0.5)


def _actor_pids(settings: Settings, class_name: str) -> set[int]:
    from ray.util.state import list_actors

    actors = list_actors(
        address=settings.ray.dashboard_url,
        filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")],
    )
    assert actors, f"no live {class_name}"
    return {int(a.pid) for a in actors}


def _service_pid(settings: Settings, name: str) -> int:
    pid = control.status(settings)[name]["pid"]
    assert pid, name
    return int(pid)


def _flink_task_pid(settings: Settings) -> int:
    """The process running the job's Python functions: PyFlink's worker in process
    mode; in thread mode the mini-cluster's JVM itself (the whole job goes with it)."""
    job = psutil.Process(_service_pid(settings, "flink"))
    children = job.children(recursive=True)
    wanted = (
        "pyflink.fn_execution.beam.beam_boot"
        if settings.flink.execution_mode == "process"
        else "org.apache.flink"
    )
    for child in children:
        if wanted in " ".join(child.cmdline()):
            return child.pid
    raise AssertionError(f"no {wanted} process under the Flink job: {children}")


def _wait_healthy(settings: Settings, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        report = control.status(settings)
        if all(v["healthy"] for v in report.values()):
            return
        assert time.monotonic() < deadline, report
        time.sleep(1)


def _audited(settings: Settings, since: float, until: float, timeout_s: float = 240) -> Audit:
    """The audit of [since, until] once the pipeline drained it (or the last attempt)."""
    deadline = time.monotonic() + timeout_s
    while True:
        audit = run_audit(settings, since, until)
        if audit.ok or time.monotonic() > deadline:
            return audit
        time.sleep(5)


def _kill_while_busy(pid: int, timeout_s: float = 30.0) -> float:
    """SIGKILL ``pid`` in the middle of work: once it used CPU in the last 0.1 s (a
    drill on an idle victim proves nothing). Returns the CPU seconds it used in that
    tenth of a second."""
    proc = psutil.Process(pid)
    deadline = time.monotonic() + timeout_s
    last = sum(proc.cpu_times()[:2])
    while True:
        time.sleep(0.1)
        now = sum(proc.cpu_times()[:2])
        if now - last >= 0.01:
            os.kill(pid, signal.SIGKILL)
            return now - last
        assert time.monotonic() < deadline, f"victim {pid} never busy in {timeout_s} s"
        last = now


def _restarted(settings: Settings, drill: str, before: set[int], timeout_s: float = 120) -> str:
    """Proof that the victim's work was taken up again: as many processes of its kind
    as before, one of them new (the actor restarted by Ray, the Flink task by its job,
    the service by the stack's supervisor, which also counts it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            now = DRILLS[drill](settings)
        except (AssertionError, psutil.Error):  # not back yet
            now = set()
        if len(now) >= len(before) and now - before:
            if drill in ("influxd", "redis-server"):
                name = "influxdb" if drill == "influxd" else "redis"
                restarts = int(control.status(settings)[name]["restarts"])
                assert restarts >= 1, control.status(settings)[name]
                return f"{sorted(before)} -> {sorted(now)}, supervisor restarts={restarts}"
            return f"{sorted(before)} -> {sorted(now)}"
        assert time.monotonic() < deadline, f"{drill}: nothing took the victim's place"
        time.sleep(1)


# Each drill's processes: the victim is one of them.
DRILLS: dict[str, Callable[[Settings], set[int]]] = {
    "scraper actor": lambda s: _actor_pids(s, "Scraper"),
    "flink task process": lambda s: {_flink_task_pid(s)},
    "collector actor": lambda s: _actor_pids(s, "CollectorActor"),
    "influxd": lambda s: {_service_pid(s, "influxdb")},
    "redis-server": lambda s: {_service_pid(s, "redis")},
}


@pytest.mark.parametrize("drill", list(DRILLS))
def test_conservation_when_killed(run: Run, drill: str) -> None:
    settings = run.settings
    _wait_healthy(settings)
    # The span starts and ends right after a snapshot, so it holds whole snapshots.
    before = _after_next_snapshot(settings, len(_snapshots(settings)))
    since = time.time()
    time.sleep(INTERVAL_S * 0.9)  # into the next snapshot
    pids = DRILLS[drill](settings)
    busy_cpu_s = _kill_while_busy(min(pids))
    restarted = _restarted(settings, drill, pids)
    during = _after_next_snapshot(settings, len(before))
    after = _after_next_snapshot(settings, len(during) + 1, timeout_s=180)
    until = time.time()
    produced = sum(after[len(before) :])
    _wait_healthy(settings)

    # Raw records are stamped with their measurement time: the snapshots after `before`
    # hold records measured up to a file's span before `since` (nothing about them
    # was written before they were measured, so the wider span is whole too).
    appended = oracle.raw_ends(settings) if drill == "collector actor" else {}
    audit = _audited(settings, since - SNAPSHOT_WINDOW_S, until)
    summary = audit.summary()
    assert audit.raw_records > 0 and audit.stored > 0, summary
    assert audit.lost == [], (drill, summary, audit.lost[:20])
    assert audit.doubled == {}, (drill, summary)
    assert audit.rejection_differences == {}, (drill, summary)
    # Every record the scrapers reported producing is in the raw topic. More is fine: a
    # shard retried after its scraper died may have produced records its first attempt
    # already marked seen (the retry reports them as seen, not produced).
    assert audit.raw_distinct >= produced, (drill, summary, after[len(before) :])
    if drill == "collector actor":
        _oracle_agrees(settings, since - SNAPSHOT_WINDOW_S, until, audit, appended)
    print(f"{drill}: killed with {busy_cpu_s:.2f} CPU-s in its last 0.1 s; {restarted}")


def _oracle_agrees(
    settings: Settings, since: float, until: float, audit: Audit, appended: dict[int, int]
) -> None:
    """The same span judged by the independent oracle (tests/oracle.py): every reading
    its own reader expects is in InfluxDB once, with a value a raw record gave; and the
    audit's readings lie between the oracle's for the records appended before the audit
    began (``appended``) and for all of them now (scrapers keep appending records measured
    inside the span while the audit runs, so an equal count would be a race)."""
    want = oracle.expected(oracle.raw_records(settings, since, until))
    floor = oracle.expected(oracle.raw_records(settings, since, until, below=appended))
    have = oracle.stored(settings, want)
    lost = [k for k in want if k not in have]
    wrong = [(k, have[k], want[k]) for k in want if k in have and not set(have[k]) <= want[k]]
    twice = [(k, have[k]) for k in want if len(have.get(k, ())) > 1]
    assert len(want) > 100, len(want)
    assert (lost, wrong, twice) == ([], [], []), (len(want), lost[:10], wrong[:10], twice[:10])
    counted = set(audit.occurrences)
    assert set(floor) <= counted <= set(want), (
        len(floor),
        len(counted),
        len(want),
        sorted(set(floor) - counted)[:10],
        sorted(counted - set(want))[:10],
    )


def _job_driver_pid(settings: Settings, entry_module: str) -> int:
    """The job's driver on this run's cluster: the Python process running its
    entrypoint (not the shell), with this cluster's ``RAY_ADDRESS`` (another test's Ray
    head on the machine may run the same module)."""
    wanted = f"RAY_ADDRESS={settings.ray.address}"
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if not (cmd and "python" in cmd[0].rsplit("/", 1)[-1] and cmd[-2:] == ["-m", entry_module]):
            continue
        try:
            environ = Path(f"/proc/{p.pid}/environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if wanted in environ.split("\0"):
            found.append(p.pid)
    assert len(found) == 1, found
    return found[0]


def test_a_failed_job_is_resubmitted_and_nothing_is_lost(run: Run) -> None:
    """The ingest job's driver killed -9 (as Ray's memory monitor may kill a job's
    supervisor): the job FAILED, `aircast run` resubmits it, and the audit of the span
    shows nothing lost or doubled."""
    settings = run.settings
    _wait_healthy(settings)
    _after_next_snapshot(settings, len(_snapshots(settings)))
    since = time.time()
    time.sleep(INTERVAL_S * 0.5)  # into the next snapshot
    os.kill(_job_driver_pid(settings, "actors.ingest"), signal.SIGKILL)
    deadline = time.monotonic() + 120
    while "ray job ingest failed: resubmitted" not in run.app.out:
        assert time.monotonic() < deadline, run.app.out[-3000:]
        time.sleep(1)
    # The resubmitted job's own log: two whole snapshots after its start.
    _after_next_snapshot(settings, 1, timeout_s=240)
    until = time.time()
    # The status lines say so (one comes every 10 s).
    while "ingest=RUNNING(restarts=1)" not in run.app.out:
        assert time.monotonic() < deadline + 300, run.app.out[-3000:]
        time.sleep(1)

    audit = _audited(settings, since - SNAPSHOT_WINDOW_S, until)
    summary = audit.summary()
    assert audit.raw_records > 0 and audit.stored > 0, summary
    assert audit.lost == [], (summary, audit.lost[:20])
    assert audit.doubled == {}, summary
    assert audit.rejection_differences == {}, summary


def _gcs_pid(settings: Settings) -> int:
    """The Ray head's GCS server (under the stack's `ray start --block`)."""
    head = psutil.Process(_service_pid(settings, "ray"))
    for child in head.children(recursive=True):
        if child.name() == "gcs_server":
            return child.pid
    raise AssertionError(f"no gcs_server under the Ray head: {head.children(recursive=True)}")


def test_a_restarted_ray_head_gets_the_pipeline_back(run: Run) -> None:
    """The Ray head's GCS killed -9: `ray start --block` ends, the stack supervisor
    starts Ray again, and the new head knows no job and no Serve app. `aircast run`,
    which talks to the cluster over HTTP only, lives on: it resubmits both jobs and
    deploys the app again on its URL; no driver of the old head is left; the audit of
    the span shows nothing lost or doubled."""
    settings = run.settings
    _wait_healthy(settings)
    base = next(line.split("│")[2].strip() for line in run.app.lines if "live map" in line)
    base = base.removesuffix("/ui/")
    assert httpx.get(f"{base}/health", timeout=30).status_code == 200
    _after_next_snapshot(settings, len(_snapshots(settings)))
    since = time.time()
    time.sleep(INTERVAL_S * 0.5)  # into the next snapshot
    killed_at = len(run.app.out)
    os.kill(_gcs_pid(settings), signal.SIGKILL)
    deadline = time.monotonic() + 300
    jobs = ["ingest", "collect", *(["alerts"] if settings.alerts.enabled else [])]
    for said in (
        *(f"ray job {name} lost (Ray head restarted?): resubmitted" for name in jobs),
        "Serve app aircast lost (Ray head restarted?): redeployed",
    ):
        while said not in run.app.out:
            assert run.app.proc.poll() is None, run.app.out[-3000:]
            assert time.monotonic() < deadline, run.app.out[-3000:]
            time.sleep(1)
    _wait_healthy(settings)
    # The new ingest job's own log: two whole snapshots after its start.
    _after_next_snapshot(settings, 1, timeout_s=240)
    until = time.time()
    while True:  # the app on the URL it had (its replicas start after the jobs')
        try:
            if httpx.get(f"{base}/health", timeout=10).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline + 300, run.app.out[-3000:]
        time.sleep(2)
    assert httpx.get(f"{base}/sensors", timeout=30).json()["sensors"]
    # The status line wraps at the console's width (a narrow one in tests): any
    # whitespace, a line break too, between its fields.
    back = re.compile(
        r"ingest=RUNNING\(restarts=\d+\)\s+collect=RUNNING\(restarts=1\)\s+"
        + (r"alerts=RUNNING\(restarts=1\)\s+" if settings.alerts.enabled else "")
        + r"serve=RUNNING"
    )
    while not back.search(run.app.out[killed_at:]):
        assert time.monotonic() < deadline + 300, run.app.out[-3000:]
        time.sleep(1)
    # One driver per job: the old head's went with it (else two ingests would race).
    _job_driver_pid(settings, "actors.ingest")
    _job_driver_pid(settings, "actors.collect")

    audit = _audited(settings, since - SNAPSHOT_WINDOW_S, until)
    summary = audit.summary()
    assert audit.raw_records > 0 and audit.stored > 0, summary
    assert audit.lost == [], (summary, audit.lost[:20])
    assert audit.doubled == {}, summary
    assert audit.rejection_differences == {}, summary


def test_ctrl_c_leaves_nothing(run: Run) -> None:
    assert run.app.stop() == 0, run.app.out
    assert "nothing left running" in run.app.out
    assert control.stack_processes(run.state) == []
    assert ray_job_drivers(run.settings.ray.address) == []
