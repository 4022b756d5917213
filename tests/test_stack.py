"""The local stack: each service round-trips data through the project's own clients,
a second `up` is refused, a taken port is replaced, a crashed service is restarted,
and `down` (or Ctrl-C on `aircast run`) leaves no process behind."""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from influxdb_client import Point, WritePrecision

from aircast.cache import key, redis_client
from aircast.errors import StackError, StorageError
from aircast.influx import InfluxV1
from aircast.kafka import consumer, ensure_topics, producer
from aircast.queries import histories, history_pages, page_clause, page_digits, sensor_count
from aircast.records import AGGREGATE_WINDOW_S
from aircast.settings import InfluxSettings, Settings, StackSettings
from aircast_cli.stack import control

from .conftest import ANY_PORT, ANY_PORT_ENV, REPO, any_port_stack
from .helpers import AircastRun


def test_redis_hash_roundtrip(stack_settings: Settings, key_prefix: str) -> None:
    r = redis_client(stack_settings.redis)
    k = key(stack_settings.redis, key_prefix, "location", "220")
    r.hset(k, mapping={"city": "Esslingen", "country": "Germany"})
    assert r.hgetall(k) == {"city": "Esslingen", "country": "Germany"}
    r.delete(k)


def test_kafka_produce_consume_with_group(stack_settings: Settings, topic: str) -> None:
    ensure_topics(stack_settings.kafka, [topic])
    ensure_topics(stack_settings.kafka, [topic])  # idempotent
    prod = producer(stack_settings.kafka)
    for i in range(50):
        prod.send(topic, key=str(i % 5).encode(), value=f"m{i}".encode())
    prod.flush()
    prod.close()

    group = f"g-{topic}"
    # tansu waits for the rebalance timeout (max_poll_interval_ms) on a group join.
    opts = {"group_id": group, "max_poll_interval_ms": 3000, "session_timeout_ms": 6000}
    c = consumer(stack_settings.kafka, topic, **opts)
    seen: list[bytes] = []
    deadline = time.monotonic() + 60
    while len(seen) < 50 and time.monotonic() < deadline:
        for records in c.poll(timeout_ms=500).values():
            seen.extend(r.value for r in records)
    c.commit()
    c.close()
    assert sorted(seen) == sorted(f"m{i}".encode() for i in range(50))

    # The same group resumes after its committed offsets: nothing is read twice.
    c = consumer(stack_settings.kafka, topic, **opts)
    again: list[bytes] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for records in c.poll(timeout_ms=500).values():
            again.extend(r.value for r in records)
        if c.assignment():
            break
    for records in c.poll(timeout_ms=1000).values():
        again.extend(r.value for r in records)
    c.close()
    assert again == []


def test_influx_line_protocol_roundtrip(stack_settings: Settings, database: str) -> None:
    start = int(time.time()) - 3600
    with InfluxV1(stack_settings.influx) as influx:
        influx.create_database(database, "7d")
        influx.create_database(database, "14d")  # idempotent, retention updated
        lines = [
            Point("P1")
            .tag("sensor_id", "468")
            .tag("city", "Aberdeen")
            .field("value", 12.5 + i)
            .time(start + 60 * i, WritePrecision.S)
            .to_line_protocol()
            for i in range(10)
        ]
        influx.write(lines, database, precision="s")
        influx.write(lines, database, precision="s")  # same series+time: overwrite
        rows = influx.rows('SELECT "value", "city" FROM "P1" ORDER BY time', database, epoch="s")
        assert [r["value"] for r in rows] == [12.5 + i for i in range(10)]
        assert rows[0]["time"] == start and rows[0]["city"] == "Aberdeen"
        assert influx.count("P1", database) == 10
        policies = influx.rows(f'SHOW RETENTION POLICIES ON "{database}"')
        assert any(p["name"] == "aircast" and p["duration"] == "336h0m0s" for p in policies)
        assert stack_settings.influx.raw_database in influx.databases()
        # A point older than the retention is refused, loudly (never dropped silently).
        old = (
            Point("P1")
            .tag("sensor_id", "1")
            .field("value", 1.0)
            .time(1_555_424_572, WritePrecision.S)
        )
        with pytest.raises(StorageError, match="beyond retention"):
            influx.write([old.to_line_protocol()], database, precision="s")


def test_a_query_on_a_missing_database_says_so(stack_settings: Settings, database: str) -> None:
    with (
        InfluxV1(stack_settings.influx) as influx,
        pytest.raises(StorageError, match="database not found"),
    ):
        influx.query('SELECT "value" FROM "P1"', f"{database}_absent")


def test_history_pages_hold_every_sensor_once(stack_settings: Settings, database: str) -> None:
    """Every sensor's history read page by page (sensor_id mod 10**k) equals the
    histories asked for by id: each sensor in exactly one page, none missing."""
    step = AGGREGATE_WINDOW_S
    last = (int(time.time()) // step - 1) * step
    sensors = [3, 7, 10, 42, 107, 142, 1000, 1007, 99_042]
    with InfluxV1(stack_settings.influx) as influx:
        influx.create_database(database, "7d")
        lines = [
            f"P1,sensor_id={sid} mean={sid + i / 10} {last - step * i}"
            for sid in sensors
            for i in range(3)
        ]
        # And either side of a midnight two days back (outside the lookback): each
        # sensor is then in three or four day-long shards and still counts once.
        midnight = last // 86_400 * 86_400 - 86_400
        lines += [f"P1,sensor_id={sid} mean=0 {midnight + d}" for sid in sensors for d in (-1, 1)]
        influx.write(lines, database, precision="s")
        shards = influx.rows('SHOW SERIES EXACT CARDINALITY FROM "P1"', database)
        assert sum(r["count"] for r in shards) >= 3 * len(sensors)  # a series per shard
        assert sensor_count(influx, database, "P1") == len(sensors)
        by_id = histories(influx, database, "P1", 4, 3600, sensors)
        assert sorted(by_id) == sensors
        assert by_id[42].means[-1] == 42.0 and math.isnan(by_id[42].means[0])
        assert [page_digits(n) for n in (0, 2_000, 2_001, 100_000, 10**9)] == [0, 0, 1, 2, 4]
        # per_page=1: ten pages (the last digit of the id).
        pages = list(history_pages(influx, database, "P1", 4, 3600, per_page=1))
        assert len(pages) == 10
        assert sorted(sid for page in pages for sid in page) == sensors  # each once
        assert {sid: h for page in pages for sid, h in page.items()} == by_id
        # Two digits: 7 and 107 and 1007 share page 7, 42/142/99042 page 42, 3 page 3.
        q = 'SELECT last("mean") FROM "P1" WHERE {} GROUP BY "sensor_id"'
        found = {
            p: sorted(int(x["tags"]["sensor_id"]) for x in influx.query(q.format(clause), database))
            for p in range(100)
            if (clause := page_clause(p, 2))
        }
        assert {p: ids for p, ids in found.items() if ids} == {
            0: [1000],
            3: [3],
            7: [7, 107, 1007],
            10: [10],
            42: [42, 142, 99_042],
        }
        assert histories(influx, database, "P1", 4, 3600) == by_id
    assert page_clause(7, 2) == '"sensor_id" =~ /^([0-9]*07|7)$/'
    with pytest.raises(ValueError, match="not below"):
        page_clause(100, 2)


def test_influx_refusals_are_clear_errors(stack_settings: Settings, database: str) -> None:
    with InfluxV1(stack_settings.influx) as influx:
        influx.create_database(database)
        with pytest.raises(StorageError, match="unable to parse") as info:
            influx.write(["P1,sensor_id=1 value="], database)
        assert info.value.status == 400
        with pytest.raises(StorageError, match="error parsing query"):
            influx.query("SELEKT 1", database)
        with pytest.raises(StorageError, match="InfluxQL error"):
            influx.query('SELECT "value" FROM "P1"', "no_such_database")
    wrong = stack_settings.influx.model_copy(update={"password": None, "username": None})
    with InfluxV1(wrong) as influx, pytest.raises(StorageError) as info:
        influx.query("SHOW DATABASES")
    assert info.value.status == 401
    dead = InfluxSettings(url="http://127.0.0.1:9", retries=1, backoff_s=0.05)
    with InfluxV1(dead) as influx, pytest.raises(StorageError, match="unreachable"):
        influx.write(["m value=1"], "x")


def test_ray_task_on_the_stack(ray_session: Settings) -> None:
    import ray

    @ray.remote
    def square(x: int) -> int:
        return x * x

    assert ray.get([square.remote(i) for i in range(5)]) == [0, 1, 4, 9, 16]
    assert ray.cluster_resources()["CPU"] >= 2


def test_status_reports_every_service_healthy(stack_settings: Settings) -> None:
    report = control.status(stack_settings)
    assert set(report) == {"redis", "kafka", "influxdb", "ray"}
    assert all(info["healthy"] for info in report.values()), report


def test_influxd_runs_under_the_memory_limit(stack_settings: Settings) -> None:
    """The local influxd gets its Go heap target (GOMEMLIMIT) from the settings."""
    environs = []
    for pid in control.stack_processes(stack_settings.stack.state_dir):
        proc = Path(f"/proc/{pid}")
        if (proc / "cmdline").read_bytes().split(b"\0")[0].endswith(b"influxd"):
            environs.append((proc / "environ").read_bytes().split(b"\0"))
    assert len(environs) == 1, environs
    limit = stack_settings.stack.influx_memory_limit_mb
    assert limit > 0
    assert f"GOMEMLIMIT={limit}MiB".encode() in environs[0]


def test_second_up_is_refused(stack_settings: Settings) -> None:
    with pytest.raises(StackError, match="already up"):
        control.up(stack_settings)


def _mini(tmp_path: Path, **stack: object) -> Settings:
    return Settings(
        stack=StackSettings(
            state_dir=tmp_path / "mini",
            services=("redis", "kafka", "influxdb"),
            **{**ANY_PORT, **stack},  # type: ignore[arg-type]
        )
    )


def test_taken_port_is_replaced_and_down_leaves_nothing(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        settings = _mini(tmp_path, redis_port=taken)
        info = control.up(settings)
        try:
            port = int(info.urls["redis"].rsplit(":", 1)[1].split("/")[0])
            assert port != taken
            stack = control.load_stack_settings(settings, settings.stack.state_dir.resolve())
            assert redis_client(stack.redis).ping()
            assert control.stack_processes(settings.stack.state_dir)
        finally:
            assert control.down(settings)
    assert control.stack_processes(settings.stack.state_dir) == []
    assert control.running(settings.stack.state_dir.resolve()) is None
    assert not control.down(settings)  # a second down is a no-op


def test_crashed_service_is_restarted(tmp_path: Path) -> None:
    settings = _mini(tmp_path)
    control.up(settings)
    try:
        pid = control.status(settings)["redis"]["pid"]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            report = control.status(settings)["redis"]
            if report["restarts"] == 1 and report["healthy"] and report["pid"] != pid:
                break
            time.sleep(0.3)
        assert report["restarts"] == 1 and report["healthy"], report
    finally:
        control.down(settings)
    assert control.stack_processes(settings.stack.state_dir) == []


def _fake_driver(ray_address: str) -> subprocess.Popen[bytes]:
    """A process with the environment Ray gives a job's driver, in a session of its own
    (as Ray starts one)."""
    env = {**os.environ, "RAY_ADDRESS": ray_address, "RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"}
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], env=env, start_new_session=True
    )


def test_a_dead_heads_job_drivers_are_stopped_with_it() -> None:
    """The drivers a Ray head leaves behind (their watchers went with it) are found by
    their cluster's address and stopped; another cluster's are not touched."""
    from aircast_cli.stack.services import Service, ray_job_drivers
    from aircast_cli.stack.supervisor import stop_strays

    mine, other = _fake_driver("127.0.0.1:1"), _fake_driver("127.0.0.1:2")
    try:
        assert ray_job_drivers("127.0.0.1:1") == [mine.pid]
        service = Service(
            "ray", [], {}, lambda: True, strays=lambda: ray_job_drivers("127.0.0.1:1")
        )
        stop_strays(service)
        assert mine.wait(timeout=10) == -signal.SIGTERM
        assert other.poll() is None and ray_job_drivers("127.0.0.1:2") == [other.pid]
    finally:
        for proc in (mine, other):
            proc.kill()
            proc.wait()


# A status line as `aircast run` prints it: its time, then the Kafka side, then (when
# InfluxDB was asked) the counts; rich may wrap it at the console's width.
STATUS_LINE = re.compile(r"^(\d\d):(\d\d):(\d\d) (raw=.*?)(?=^\d\d:\d\d:\d\d |\Z)", re.M | re.S)


def test_aircast_run_reports_its_status_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    state = tmp_path / "run-stack"
    every, count_every = 1, 5
    app = AircastRun(
        {
            "AIRCAST_STACK__STATE_DIR": str(state),
            "AIRCAST_STACK__SERVICES": '["redis","kafka","influxdb"]',
            **ANY_PORT_ENV,
        },
        *("--status-every", str(every), "--count-every", str(count_every)),
    )
    try:
        app.wait_running(timeout_s=180)
        assert any("influxdb" in line and "http://127.0.0.1:" in line for line in app.lines)
        deadline = time.monotonic() + 60
        while len(STATUS_LINE.findall(app.out)) < 14 and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        code = app.stop(timeout_s=120)
    assert code == 0, app.out
    assert "nothing left running" in app.out
    assert control.stack_processes(state) == []
    # A status line each second; InfluxDB's counts (every series scanned) on the first
    # and then once every 5 s, not on every line. Printed times are whole seconds.
    lines = [
        (int(h) * 3600 + int(m) * 60 + int(s), "influx_points_1h=" in text)
        for h, m, s, text in STATUS_LINE.findall(app.out)
    ]
    assert len(lines) >= 14, app.out
    counted = [t for t, with_counts in lines if with_counts]
    assert lines[0][1] and len(counted) >= 2 and len(counted) < len(lines) / 2, app.out
    assert all((b - a) % 86400 >= count_every - 2 for a, b in itertools.pairwise(counted)), app.out
    last = lines[0][0]
    for t, with_counts in lines:
        if with_counts:
            last = t
        else:
            assert (t - last) % 86400 <= count_every + 2, app.out  # no count was skipped


@pytest.mark.flink
def test_shared_core_imports_in_the_flink_venv() -> None:
    flink_python = REPO / ".venv-flink" / "bin" / "python"
    code = (
        "import sys, aircast, aircast.settings, aircast.measures, aircast.influx, "
        "aircast.kafka, aircast.cache, aircast_cli.stack.control\n"
        "import pyflink.datastream.connectors.kafka as k\n"
        "assert hasattr(k, 'KafkaSource') and hasattr(k, 'KafkaSink')\n"
        "bad = [m for m in ('ray', 'tensorflow', 'keras') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print('ok', aircast.__version__)\n"
    )
    result = subprocess.run(
        [str(flink_python), "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok 0.1.0"


def test_shared_core_never_imports_runtimes() -> None:
    code = (
        "import sys, aircast_cli.cli, aircast.settings, aircast.measures, aircast.influx, "
        "aircast.kafka, aircast.cache, aircast_cli.stack.control\n"
        "bad = [m for m in ('ray', 'tensorflow', 'keras', 'pyflink') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.flink
@pytest.mark.slow
def test_flink_job_runs_as_a_supervised_service(tmp_path: Path) -> None:
    settings = Settings(stack=any_port_stack(tmp_path / "flink-stack", ("kafka", "flink")))
    control.up(settings)
    try:
        report = control.status(settings)
        assert report["flink"]["healthy"], report
        stack = control.load_stack_settings(settings, settings.stack.state_dir.resolve())
        from aircast.kafka import admin

        client = admin(stack.kafka)
        try:  # the topics the job reads and writes exist before it starts
            assert set(client.list_topics()) >= {stack.kafka.raw_topic, stack.kafka.readings_topic}
        finally:
            client.close()
    finally:
        control.down(settings)
    assert control.stack_processes(settings.stack.state_dir) == []
    java = subprocess.run(
        ["pgrep", "-f", str(settings.stack.state_dir.resolve())], capture_output=True, text=True
    )
    assert java.stdout.strip() == ""


def test_down_keeps_only_the_newest_ray_session_and_purge_keeps_none(tmp_path: Path) -> None:
    from aircast_cli.stack.services import Plan
    from aircast_cli.stack.supervisor import plan_path

    state = (tmp_path / "pruned").resolve()
    state.mkdir()
    plan = Plan(state, ("ray",), {"ray.port": 1}, "u", "p")
    plan_path(state).write_text(json.dumps(plan.to_json()))
    temp = plan.ray_temp_dir
    sessions = [temp / f"session_2026-11-2{i}_10-00-00_000000_1" for i in range(3)]
    for i, session in enumerate(sessions):
        (session / "logs").mkdir(parents=True)
        os.utime(session, (1_000 + i, 1_000 + i))
    (temp / "session_latest").symlink_to(sessions[-1])
    settings = Settings(stack=any_port_stack(state, ("ray",)))
    try:
        assert not control.down(settings)
        left = sorted(p.name for p in temp.glob("session_2*"))
        assert left == [sessions[-1].name]  # the newest kept, for its logs
        control.down(settings, purge=True)
        assert not temp.exists()
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def test_a_service_never_ready_is_started_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A service still running but not ready by the start timeout (a Ray head whose
    raylet gave up waiting for its agent on a busy machine) is stopped, group and all,
    and started afresh, up to the supervisor's attempts; the stack comes up."""
    from aircast_cli.stack.services import Plan, Service
    from aircast_cli.stack.supervisor import Running, Supervisor

    first, ready = tmp_path / "first", tmp_path / "ready"
    script = f"if [ -e {first} ]; then touch {ready}; else touch {first}; fi; exec sleep 60"
    flaky = Service(name="flaky", argv=["sh", "-c", script], env={}, health=ready.exists)
    supervisor = Supervisor(Plan(tmp_path / "state", (), {}, "aircast", "x"))
    supervisor.running = [Running(flaky)]
    caplog.set_level(logging.WARNING)
    try:
        assert supervisor.start(timeout_s=3.0)
        assert first.exists() and ready.exists()
        assert "service not ready, starting it again name=flaky" in caplog.text
    finally:
        supervisor.stop()
    assert supervisor.running[0].process is not None
    assert supervisor.running[0].process.poll() is not None
