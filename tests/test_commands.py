"""The stage commands as a user types them, against the session's real stack.

* ``ray job submit -- python -m <stage module>`` exactly as the README gives it, from a
  shell in the checkout: the local Ray head runs jobs with the project's virtualenv
  and finds the stack's settings itself, so no ``--runtime-env`` or interpreter path
  is needed (a job run by the system interpreter fails: no module named 'actors').
* ``aircast ingest --once`` and ``aircast collect --until-idle``, the same stages
  through the CLI, with the same options (one parser: :mod:`aircast.options`);
  ``aircast backfill``, ``simulate``, ``stack up|status|down``, ``serve`` and
  ``serve --down``, each as typed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from aircast.forecasting import DAY_STEPS
from aircast.influx import InfluxV1
from aircast.kafka import ensure_topics
from aircast.localhost import free_port
from aircast.measures import MEASURES
from aircast.settings import Settings
from aircast.simulator import FEED_PATH

from .conftest import ANY_PORT_ENV, REPO, unique
from .helpers import last_json, ray_job_submit, read_topic, seed_daily_cycles, shell
from .test_archive import ARCHIVE
from .test_collect import distinct_points, make_readings, produce_stream
from .test_serve_api import shut_serve_down

AIRCAST = str(Path(sys.executable).parent / "aircast")


def test_ray_job_submit_runs_the_ingest_module_as_written(stack_settings: Settings) -> None:
    out = ray_job_submit(
        stack_settings,
        "python",
        "-m",
        "actors.ingest",
        "--once",
        "--source",
        "simulator",
        "--history-hours",
        "0",
    )
    assert "snapshot ingested source=simulator" in out, out[-4000:]
    assert "No module named" not in out


def test_ray_job_submit_runs_the_collect_module_as_written(stack_settings: Settings) -> None:
    out = ray_job_submit(stack_settings, "python", "-m", "actors.collect", "--until-idle", "2")
    assert "collector finished" in out, out[-4000:]


def test_aircast_train_says_when_the_span_has_nothing_to_fit(
    stack_settings: Settings, stack_dir: Path, tmp_path: Path
) -> None:
    """``aircast train`` is the training job's main as a command (its fits, registered,
    promoted and served: tests/test_forecast_serve.py, through ``ray job submit``). On
    the stack found from its state folder, an aggregates database whose only readings
    lie before the history span: the warning, one JSON line with no models, exit 0."""
    database = unique("agg")
    settings = stack_settings.model_copy(
        update={
            "influx": stack_settings.influx.model_copy(update={"aggregates_database": database})
        }
    )
    end = 1_551_398_400 + 10 * 86_400
    seed_daily_cycles(settings, (603,), end - 5 * 86_400, DAY_STEPS)  # 4 days too old
    env = {
        "AIRCAST_STACK__STATE_DIR": str(stack_dir.resolve()),
        "AIRCAST_INFLUX__AGGREGATES_DATABASE": database,
        "AIRCAST_TRAIN__STORAGE_PATH": str(tmp_path / "train"),
        "AIRCAST_TRAIN__REGISTRY_DIR": str(tmp_path / "models"),
        "AIRCAST_TRAIN__MEASURES": '["temperature"]',
        "AIRCAST_TRAIN__HISTORY_DAYS": "3",
    }
    out = shell([AIRCAST, "train", "--end", str(end)], env)
    assert "no aggregates to train on" in out, out[-4000:]
    assert last_json(out) == {"models": 0, "promoted": {}, "seconds": 0.0}, out[-4000:]
    assert not (tmp_path / "models").exists()


@pytest.fixture()
def own_names(stack_settings: Settings, stack_dir: Path) -> tuple[Settings, dict[str, str]]:
    """Fresh topics and databases, as settings and as the ``AIRCAST_*`` variables that
    give them to a command (which finds the stack itself, from its state folder)."""
    kafka = stack_settings.kafka.model_copy(
        update={
            "raw_topic": unique("raw"),
            "readings_topic": unique("readings"),
            "aggregates_topic": unique("aggs"),
            "dead_letter_topic": unique("dlq"),
        }
    )
    influx = stack_settings.influx.model_copy(
        update={"raw_database": unique("raw"), "aggregates_database": unique("agg")}
    )
    settings = stack_settings.model_copy(update={"kafka": kafka, "influx": influx})
    env = {
        "AIRCAST_STACK__STATE_DIR": str(stack_dir.resolve()),
        "AIRCAST_KAFKA__RAW_TOPIC": kafka.raw_topic,
        "AIRCAST_KAFKA__READINGS_TOPIC": kafka.readings_topic,
        "AIRCAST_KAFKA__AGGREGATES_TOPIC": kafka.aggregates_topic,
        "AIRCAST_KAFKA__DEAD_LETTER_TOPIC": kafka.dead_letter_topic,
        "AIRCAST_INFLUX__RAW_DATABASE": influx.raw_database,
        "AIRCAST_INFLUX__AGGREGATES_DATABASE": influx.aggregates_database,
        "AIRCAST_REDIS__KEY_PREFIX": unique("cmd") + ":",
    }
    return settings, env


def test_aircast_ingest_once_produces_a_snapshot(
    own_names: tuple[Settings, dict[str, str]],
) -> None:
    settings, env = own_names
    aircast = str(Path(sys.executable).parent / "aircast")
    out = shell(
        [aircast, "ingest", "--once", "--source", "simulator", "--scrapers", "2"],
        {
            **env,
            "AIRCAST_INGEST__SIMULATOR_SENSORS": "40",
            "AIRCAST_INGEST__SIMULATOR_HISTORY_H": "0",
        },
    )
    produced = int(
        out.split("snapshot ingested source=simulator")[1].split("produced=")[1].split()[0]
    )
    assert produced > 0, out[-4000:]
    assert len(read_topic(settings.kafka, settings.kafka.raw_topic, expect=produced)) == produced


def test_aircast_collect_until_idle_writes_every_reading(
    own_names: tuple[Settings, dict[str, str]],
) -> None:
    settings, env = own_names
    ensure_topics(settings.kafka)
    readings = make_readings(4, 5, seed=21)
    produce_stream(settings, readings, [], [], chunks=2, pause_s=0)
    shell([AIRCAST, "collect", "--actors", "2", "--until-idle", "1"], env)
    assert len(distinct_points(settings, settings.influx.raw_database)) == len(readings)


def test_aircast_backfill_loads_an_archive_day_and_balances(
    own_names: tuple[Settings, dict[str, str]],
) -> None:
    """`aircast backfill` on one real archive day: its report balances (every value
    written or rejected with a reason) and InfluxDB holds what it says it wrote."""
    settings, env = own_names
    out = shell(
        [
            *(AIRCAST, "backfill", "--archive", str(ARCHIVE)),
            *("--from", "2019-03-02", "--to", "2019-03-02", "--no-dead-letters"),
        ],
        # A 2019 day is past the default 30 days of raw retention: keep it all here.
        {**env, "AIRCAST_INFLUX__RAW_RETENTION": "INF"},
    )
    report = json.loads(next(ln for ln in reversed(out.splitlines()) if ln.startswith("{")))
    written = report["readings_written"]
    assert report["days"] == 1 and written > 1000, report
    assert report["values"] == written + sum(report["rejected"].values()), report
    # Counted by InfluxDB itself, over every measure of the domain's table.
    with InfluxV1(settings.influx) as influx:

        def stored(field: str, database: str) -> int:
            return sum(
                int(row["count"])
                for m in MEASURES
                for row in influx.rows(f'SELECT count("{field}") FROM "{m.name}"', database)
            )

        assert stored("value", settings.influx.raw_database) == written
        aggregates = stored("mean", settings.influx.aggregates_database)
    assert aggregates == report["aggregates_written"] > 0, report


def test_aircast_simulate_serves_the_feed_until_ctrl_c() -> None:
    port = free_port()
    with subprocess.Popen(
        [AIRCAST, "simulate", "--sensors", "50", "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert "simulator: 50 sensors" in proc.stdout.readline()
            feed = httpx.get(f"http://127.0.0.1:{port}{FEED_PATH}", timeout=30).json()
            sensors = {record["sensor"]["id"] for record in feed}
            assert feed and 0 < len(sensors) <= 50
        finally:
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=30)
    assert code == 0


def test_aircast_stack_up_status_down_as_commands(tmp_path: Path) -> None:
    env = {"AIRCAST_STACK__STATE_DIR": str(tmp_path / "state"), **ANY_PORT_ENV}
    out = shell([AIRCAST, "stack", "up", "--services", "redis,kafka"], env)
    assert "redis" in out and "kafka" in out
    try:
        status = shell([AIRCAST, "stack", "status"], env)
        assert status.count("yes") == 2, status  # both healthy
    finally:
        down = shell([AIRCAST, "stack", "down"], env)
    assert "stack stopped" in down
    assert "no stack was up" in shell([AIRCAST, "stack", "down"], env)


def test_aircast_serve_and_serve_down(stack_settings: Settings, stack_dir: Path) -> None:
    shut_serve_down()  # another file's app may have left Serve up on the session stack
    port = free_port()
    env = {"AIRCAST_STACK__STATE_DIR": str(stack_dir.resolve()), "AIRCAST_SERVE__PORT": str(port)}
    out = shell([AIRCAST, "serve"], env, timeout=600)
    assert f"http://127.0.0.1:{port}/ui/" in out, out[-3000:]
    health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=30)
    assert health.status_code == 200, health.text
    assert "Serve shut down" in shell([AIRCAST, "serve", "--down"], env, timeout=300)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
