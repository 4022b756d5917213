"""`aircast run` (what `make run` runs) end to end: the whole stack, the Flink job, the
ingest and collect Ray jobs and the Serve app; simulator readings reach InfluxDB and the
HTTP API; Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from aircast.influx import InfluxV1
from aircast.measures import MEASURES
from aircast.settings import Settings, StackSettings
from aircast.stack import control

from .conftest import REPO


@pytest.mark.slow
@pytest.mark.flink
def test_make_run_pipeline_end_to_end(tmp_path: Path) -> None:
    state = tmp_path / "run"
    env = {
        **os.environ,
        "AIRCAST_STACK__STATE_DIR": str(state),
        "AIRCAST_INGEST__SOURCE": "simulator",
        "AIRCAST_INGEST__SIMULATOR_SENSORS": "60",
        "AIRCAST_INGEST__INTERVAL_S": "15",
        "AIRCAST_INGEST__SCRAPERS": "2",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "aircast.cli", "run", "--status-every", "10"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True
    )
    reader.start()
    try:
        deadline = time.monotonic() + 420
        while not any("Ctrl-C" in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(1)
        settings = control.load_stack_settings(
            Settings(stack=StackSettings(state_dir=state)), state.resolve()
        )
        report = control.status(settings)
        unhealthy = {k: v for k, v in report.items() if not v["healthy"]}
        assert not unhealthy, unhealthy
        assert set(report) == {"redis", "kafka", "influxdb", "ray", "flink"}

        # Simulator readings go all the way into InfluxDB.
        names = ",".join(f'"{m.name}"' for m in MEASURES)
        points = 0
        with InfluxV1(settings.influx) as influx:
            while time.monotonic() < deadline and points == 0:
                rows = influx.rows(
                    f'SELECT count("value") FROM {names}', settings.influx.raw_database
                )
                points = sum(int(r["count"]) for r in rows)
                time.sleep(2)
        assert points > 0, "".join(lines)

        # The HTTP API answers with those sensors.
        base = next(line.split("│")[2].strip() for line in lines if "live map" in line)
        base = base.removesuffix("/ui/")
        sensors = httpx.get(f"{base}/sensors", timeout=30).json()
        assert len(sensors["sensors"]) > 0
        assert any("ray job: ingest" in line for line in lines)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        reader.join(timeout=10)
        proc.stdout.close()
    out = "".join(lines)
    assert proc.returncode == 0, out
    assert "nothing left running" in out
    assert control.stack_processes(state) == []
