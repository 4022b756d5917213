"""Soak: `aircast run` on the simulator at a sustained rate for a long time (marked
``soak``; `make soak` runs it, `make test` does not).

Defaults: one hour at 10x the real network's rate (about 1,400 records/s: the simulator's
sensors report every 145 s, so 203,000 of them). Override with ``AIRCAST_SOAK_SECONDS``
and ``AIRCAST_SOAK_RECORDS_PER_S``.

Checked, and written to ``<state>/soak.json`` (and printed) for the README:

* memory: every stack and Ray process's anonymous memory (``RssAnon``: its own, not the
  pages of files it maps, e.g. influxd's data files) is sampled every 30 s; after a
  warm-up (a quarter of the run, and at least the longest any state takes to fill by
  design: the Flink job's windows, 10 minutes held back 15 more; the dedupe memories'
  TTL; the forecast cache in Redis, one entry per series, which fills only once the
  series have aggregates and a refresh period has passed; plus 2 minutes), no process
  grows by more than 25 % + 64 MiB from its level at the end of warm-up (its median over
  the warm-up's last quarter) to its median over the run's last quarter; except the
  local in-memory broker, which holds every message by design (its growth is
  reported). The run keeps the ingest's seen-keys and the Flink job's dedupe state for
  ``TTL_S`` (10 minutes; by default 2 days and 2 hours): with the defaults both grow by
  design for longer than any soak, and flatness could not tell that growth from a
  leak;
* lag: the collectors' lag, sampled every ``LAG_SAMPLE_S``, touches zero in every
  span of two refresh intervals after warm-up (a snapshot comes each interval; the
  10-minute aggregates arrive in one burst at 10x, ~460,000 of them), i.e. after every
  snapshot the pipeline catches up;
* conservation: ``aircast audit`` over the whole run shows nothing lost or doubled
  (after the hour the ingest job and the network stop, the rest drains, then the audit).

Reported, not checked: each process's CPU after warm-up (in cores: its CPU seconds over
the wall seconds) and the machine's load, to tell where a lag's cores went.

The network is a process of its own (``aircast simulate``), read by the ingest as the
live API is, over HTTP: its memory (the network's 200,000 sensors and their current
file) is the world's, not aircast's, and is reported beside the rest.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from aircast.audit import run_audit
from aircast.localhost import free_port
from aircast.pipeline import status as pipeline_status
from aircast.records import AGGREGATE_WINDOW_S
from aircast.settings import FlinkSettings, ServeSettings, Settings, StackSettings
from aircast.simulator import FEED_PATH
from aircast_cli.stack import control

from .conftest import REPO
from .helpers import AircastRun

SECONDS = float(os.environ.get("AIRCAST_SOAK_SECONDS", "3600"))
RATE = float(os.environ.get("AIRCAST_SOAK_RECORDS_PER_S", "1400"))
# The run itself, plus start-up, the audit and the stop.
pytestmark = [pytest.mark.soak, pytest.mark.flink, pytest.mark.timeout(SECONDS + 2700)]

READING_INTERVAL_S = 145  # the simulator's sensors report this often (as SDS011s do)
REFRESH_S = 60  # the live API (and the simulator by default) publish a new file a minute
SAMPLE_S = 30
LAG_SAMPLE_S = 5
# The dedupe memories' TTL in the run: longer than a file's span (5 minutes) plus the
# fetch interval, so a record seen again in the next files is still recognised.
TTL_S = 600
# The longest the Flink job keeps a window's state: the window, then the watermark's
# hold-back (out-of-orderness + allowed lateness; 10 + 5 + 10 minutes by default).
_FLINK = FlinkSettings()
WINDOW_STATE_S = (
    AGGREGATE_WINDOW_S + _FLINK.watermark_out_of_orderness_s + _FLINK.allowed_lateness_s
)
# The Refresher's forecast cache (Redis, one key per sensor and measure) fills once the
# first aggregates are in InfluxDB and a refresh period has passed, so redis-server
# grows until then by design: its bound is judged after this.
FORECAST_FILL_S = WINDOW_STATE_S + ServeSettings().forecast_refresh_s
# The local JVM's heap for the run: at 10x the network the job's state (the dedupe's
# 10 minutes of ~3,200 readings/s, ~460,000 sensor-measure windows) wants more than the
# default 3 GB, where the trial spent 8 % of its time in garbage collection.
FLINK_HEAP_MB = 4096
IN_MEMORY_BROKER = "tansu"


def rss_bound(base: float) -> float:
    return base * 1.25 + 64 * 2**20


def _processes(state: Path) -> dict[int, str]:
    """Every process of this stack and its Ray cluster, by PID → short name."""
    out: dict[int, str] = {}
    pids: set[int] = set()
    for pid in control.stack_processes(state):
        pids.add(pid)
        try:  # the supervisor's children: redis-server and tansu do not name the folder
            pids.update(c.pid for c in psutil.Process(pid).children(recursive=True))
        except psutil.Error:
            continue
    for pid in sorted(pids):
        try:
            cmd = " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            continue
        out[pid] = cmd.split(" -")[0].rsplit("/", 1)[-1][:40] + f"[{pid}]"
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if proc.info["pid"] not in out and ("ray::" in cmd or "actors." in cmd):
            out[proc.info["pid"]] = cmd[:40] + f"[{proc.info['pid']}]"
    return out


def _anon_rss(pid: int) -> int | None:
    """The process's anonymous resident memory in bytes (None if it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return None


def _cpu_s(pid: int) -> float | None:
    """The process's own CPU seconds, user and system (None if it is gone)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


def _cores(series: list[tuple[float, float]], after: float) -> float:
    """Cores used from ``after`` to the last sample (CPU seconds over wall seconds)."""
    tail = [(t, cpu) for t, cpu in series if t >= after]
    if len(tail) < 2 or tail[-1][0] <= tail[0][0]:
        return 0.0
    return (tail[-1][1] - tail[0][1]) / (tail[-1][0] - tail[0][0])


def _ray_job_logs(settings: Settings) -> str:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(settings.ray.dashboard_url)
    return "".join(
        client.get_job_logs(j.submission_id) for j in client.list_jobs() if j.submission_id
    )


def _redis_keys(settings: Settings) -> dict[str, int]:
    """Redis's keys by kind (the part after the prefix: seen, lettered, place, ...)."""
    from collections import Counter

    from aircast.cache import redis_client

    client = redis_client(settings.redis)
    kinds: Counter[str] = Counter()
    prefix = len(settings.redis.key_prefix)
    for name in client.scan_iter(count=10_000):
        kinds[name[prefix:].split(":", 1)[0]] += 1
    client.close()
    return dict(kinds)


def _stop_ingest(settings: Settings) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(settings.ray.dashboard_url)
    for job in client.list_jobs():
        ingest = (job.metadata or {}).get("aircast") == "ingest"
        if job.submission_id and ingest and job.status == JobStatus.RUNNING:
            client.stop_job(job.submission_id)


def test_soak(tmp_path: Path) -> None:
    seconds, rate = SECONDS, RATE
    sensors = max(1, round(rate * READING_INTERVAL_S))
    state = tmp_path / "state"
    port = free_port()
    simulate = ["simulate", "--sensors", str(sensors), "--port", str(port)]
    network = subprocess.Popen(
        [sys.executable, "-m", "aircast_cli", *simulate],
        cwd=REPO,
        env={**os.environ, "AIRCAST_INGEST__SIMULATOR_REFRESH_S": str(REFRESH_S)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    app = AircastRun(
        {
            "AIRCAST_STACK__STATE_DIR": str(state),
            "AIRCAST_INGEST__SOURCE": "live",
            "AIRCAST_INGEST__LIVE_URL": f"http://127.0.0.1:{port}{FEED_PATH}",
            "AIRCAST_INGEST__INTERVAL_S": str(REFRESH_S),
            "AIRCAST_INGEST__SCRAPERS": "2",
            "AIRCAST_INGEST__DEDUPE_TTL_S": str(TTL_S),
            "AIRCAST_FLINK__DEDUPE_TTL_S": str(TTL_S),
            "AIRCAST_STACK__FLINK__HEAP_MB": str(FLINK_HEAP_MB),
        },
        "--status-every",
        "30",
        # InfluxDB's counts of the last hour scan every series: at 10x ~20 CPU-s each
        # (aircast.pipeline); the run's own status line stays on the Kafka side.
        "--count-every",
        "0",
    )
    samples: dict[str, list[tuple[float, int]]] = {}
    # By PID: a Ray worker's title changes while it runs a method (its memory is
    # reported under both titles, "between files" and "while processing"; its CPU once).
    cpu: dict[int, list[tuple[float, float]]] = {}
    cpu_names: dict[int, str] = {network.pid: "network simulator"}
    load: list[tuple[float, float]] = []
    network_rss: list[int] = []
    lags: list[tuple[float, int | None]] = []
    flink_lags: list[tuple[float, int | None]] = []
    sampling = threading.Event()
    try:
        app.wait_running(timeout_s=600)
        settings = control.load_stack_settings(
            Settings(stack=StackSettings(state_dir=state)), state.resolve()
        )
        since = time.time()
        start = time.monotonic()

        def sample_lag() -> None:
            while not sampling.wait(LAG_SAMPLE_S):
                try:
                    now = pipeline_status(settings, influx=False)
                except Exception:  # a missed sample is a gap in the series, not a failure
                    continue
                t = time.monotonic() - start
                lags.append((t, now.collector_lag))
                flink_lags.append((t, now.flink_lag))

        lag_thread = threading.Thread(target=sample_lag, daemon=True)
        lag_thread.start()
        while time.monotonic() - start < seconds:
            assert app.proc.poll() is None, "".join(app.lines[-50:])
            assert network.poll() is None, "the simulated network stopped"
            t = time.monotonic() - start
            for pid, name in _processes(state).items():
                anon = _anon_rss(pid)
                if anon is not None:
                    samples.setdefault(name, []).append((t, anon))
                cpu_names.setdefault(pid, name)
            network_rss.append(_anon_rss(network.pid) or 0)
            for pid in cpu_names:
                cpu_s = _cpu_s(pid)
                if cpu_s is not None:
                    cpu.setdefault(pid, []).append((t, cpu_s))
            load.append((t, os.getloadavg()[0]))
            time.sleep(SAMPLE_S)
        until = time.time()
        redis_keys = _redis_keys(settings)
        sampling.set()
        lag_thread.join(timeout=60)
        # Nothing more comes in: the ingest job is stopped (`aircast run` leaves a job
        # stopped on purpose stopped) and the network with it, so the drain and the
        # audit do not compete with new snapshots for the machine's memory and cores
        # (a broker and a network still growing during the audit can make Ray's memory
        # monitor kill the jobs that are draining).
        _stop_ingest(settings)
        network.terminate()
        network.wait(timeout=30)
        # The last snapshots are still in flight: audit once the collectors caught up
        # (an audit of an hour at 10x reads millions of messages: not in a tight loop).
        drain_until = time.monotonic() + 1200
        settle = time.monotonic() + 300
        time.sleep(30)
        while (
            time.monotonic() < settle and pipeline_status(settings, influx=False).collector_lag != 0
        ):
            time.sleep(10)
        audit = run_audit(settings, since, until)
        audits = 1
        while not audit.ok and time.monotonic() < drain_until:
            time.sleep(60)
            audit = run_audit(settings, since, until)
            audits += 1
        jobs_log = _ray_job_logs(settings)
    finally:
        sampling.set()
        app.stop()
        network.terminate()
        network.wait(timeout=30)
    # What the run said: its own output, its Ray jobs' and every stack service's log.
    log = (
        "".join(app.lines)
        + jobs_log
        + "".join(f.read_text(errors="replace") for f in sorted((state / "logs").glob("*.log")))
    )

    warm = max(seconds / 4, TTL_S + 120, FORECAST_FILL_S + 120)
    growth: dict[str, tuple[int, int]] = {}
    for name, series in samples.items():
        base = [rss for t, rss in series if warm * 0.75 <= t <= warm]
        tail = [rss for t, rss in series if t >= seconds * 0.75]
        if base and tail:
            growth[name] = (int(statistics.median(base)), int(statistics.median(tail)))
    # The local broker (tansu) keeps every message in memory, so it grows with the data
    # by design (the cluster's Kafka keeps them on disk, with retention): reported, not
    # held to the bound.
    broker = {n: g for n, g in growth.items() if n.startswith(IN_MEMORY_BROKER)}
    grew = {n: g for n, g in growth.items() if n not in broker and g[1] > rss_bound(g[0])}
    # After warm-up, every span of two refresh intervals must hold a zero-lag sample.
    after = [(t, lag) for t, lag in lags if t > warm]
    span = 2 * REFRESH_S
    spans = [(warm + i * span, warm + (i + 1) * span) for i in range(int((seconds - warm) // span))]
    behind = [
        (round(a), round(b))
        for a, b in spans
        if not any(lag == 0 for t, lag in after if a <= t < b)
    ]
    zero_hits = sum(1 for _, lag in after if lag == 0)
    result = {
        "seconds": seconds,
        "records_per_s": rate,
        "sensors": sensors,
        "raw_records": audit.raw_records,
        "readings": audit.stored,
        "lost": len(audit.lost),
        "written_twice": len(audit.doubled),
        "max_lag": max((lag or 0 for _, lag in after), default=None),
        "lag_zero_samples": zero_hits,
        "lag_samples": len(after),
        "lag_spans": len(spans),
        "lag_spans_never_zero": behind,
        # The job commits its offsets at each checkpoint: its lag includes up to one
        # checkpoint interval of records even when it keeps up.
        "flink_lag_median": statistics.median(
            [lag or 0 for t, lag in flink_lags if t > warm] or [0]
        ),
        "flink_lag_max": max((lag or 0 for t, lag in flink_lags if t > warm), default=None),
        "flink_lag_last": flink_lags[-1][1] if flink_lags else None,
        "dedupe_ttl_s": TTL_S,
        "warm_up_s": warm,
        "anon_rss_mib": {n: [round(b / 2**20), round(e / 2**20)] for n, (b, e) in growth.items()},
        # The larger processes' memory every 5 minutes (MiB), to see a growth's shape.
        "anon_rss_every_5_min": {
            n: [round(rss / 2**20) for t, rss in series if int(t) % 300 < SAMPLE_S]
            for n, series in samples.items()
            if max(rss for _, rss in series) > 200 * 2**20
        },
        "redis_keys_at_the_end_of_the_hour": redis_keys,
        "grew_beyond_bound": sorted(grew),
        "audit_seconds": round(audit.seconds),
        "audits": audits,
        "snapshots_ingested": log.count("snapshot ingested"),
        "snapshots_given_up": log.count("snapshot given up"),
        "service_restarts": log.count("service exited"),
        # Ray jobs that FAILED and `aircast run` resubmitted (e.g. killed by Ray's
        # memory monitor): the audit says whether anything was lost by it.
        "job_resubmissions": log.count(": resubmitted"),  # failed, or lost with its head
        # Where the cores went after warm-up (processes using a twentieth of one or more).
        "cpu_cores_after_warm_up": dict(
            sorted(
                (
                    (cpu_names[pid], round(c, 2))
                    for pid, series in cpu.items()
                    if (c := _cores(series, warm)) >= 0.05
                ),
                key=lambda item: -item[1],
            )
        ),
        "load_1_min_after_warm_up": [
            round(f(v for t, v in load if t > warm), 1) if any(t > warm for t, _ in load) else None
            for f in (min, statistics.median, max)
        ],
        "network_simulator_mib": [
            round(network_rss[0] / 2**20) if network_rss else None,
            round(max(network_rss, default=0) / 2**20),
        ],
        "in_memory_broker_mib": {
            n: [round(b / 2**20), round(e / 2**20)] for n, (b, e) in broker.items()
        },
    }
    (state.parent / "soak.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    assert audit.raw_records > 0
    assert audit.lost == [] and audit.doubled == {}, result
    assert not grew, result
    assert spans and not behind, result
