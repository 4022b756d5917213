"""The stage commands as a user types them, against the session's real stack.

* ``ray job submit -- python -m <stage module>`` exactly as the README gives it, from a
  shell in the checkout: the local Ray head runs jobs with the project's virtualenv
  and finds the stack's settings itself, so no ``--runtime-env`` or interpreter path
  is needed (a job run by the system interpreter fails: no module named 'actors').
* ``aircast ingest --once`` and ``aircast collect --until-idle``, the same stages
  through the CLI, with the same options (one parser: :mod:`aircast.options`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aircast.kafka import ensure_topics
from aircast.settings import Settings

from .conftest import REPO, unique
from .helpers import read_topic
from .test_collect import distinct_points, make_readings, produce_stream

RAY = str(Path(sys.executable).parent / "ray")


def _shell(argv: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """``argv`` run from the checkout with the user's environment; its output, or a
    failure that shows it."""
    done = subprocess.run(
        argv,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    return out


def _submit(settings: Settings, *entrypoint: str) -> str:
    return _shell(
        [RAY, "job", "submit", "--address", settings.ray.dashboard_url, "--", *entrypoint]
    )


def test_ray_job_submit_runs_the_ingest_module_as_written(stack_settings: Settings) -> None:
    out = _submit(
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


def test_ray_job_submit_runs_the_collect_and_training_modules_as_written(
    stack_settings: Settings,
) -> None:
    out = _submit(stack_settings, "python", "-m", "actors.collect", "--until-idle", "2")
    assert "collector finished" in out, out[-4000:]
    # Training up to the epoch's first day: the module runs, finds nothing to fit.
    out = _submit(stack_settings, "python", "-m", "training.job", "--end", "86400")
    summary = json.loads(next(line for line in out.splitlines() if line.startswith('{"models"')))
    assert summary["models"] == 0


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
    out = _shell(
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
    aircast = str(Path(sys.executable).parent / "aircast")
    _shell([aircast, "collect", "--actors", "2", "--until-idle", "1"], env)
    assert len(distinct_points(settings, settings.influx.raw_database)) == len(readings)
