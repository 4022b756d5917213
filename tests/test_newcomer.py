"""A newcomer's first `make run`, exactly: the README's command on a stack that is not
up yet, default settings (4 scrapers, the 300-sensor simulator with its last 24 hours
seeded), the live API unreachable so it falls back to the simulator, the Serve app
deployed through the dashboard's REST API beside the two jobs. It must come up with
the map, the API, history and forecasts answering and every stage RUNNING on the
status line; and so beside the rest of the suite (make test's two-worker phase), and on a
machine whose two cores are already busy (alone, in make test's exclusive phase: the
spinners would starve the other worker's drills).

The live API's URL points at a closed port on 127.0.0.1: a test sends nothing beyond
this machine, and the fallback to the simulator is the path a newcomer offline takes.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest

from aircast.localhost import free_port

from .helpers import AircastRun

pytestmark = [pytest.mark.slow, pytest.mark.flink]

# The jobs' and the app's states on the status line (alerts when alerts.enabled); the
# line may wrap at the console's width, so any whitespace separates the fields.
STATUS = re.compile(r"ingest=(\S+)\s+collect=(\S+)\s+(?:alerts=(\S+)\s+)?serve=(\S+)")


@contextmanager
def busy_cores(n: int) -> Iterator[list[psutil.Process]]:
    """``n`` processes that spin on a core each until the block ends."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield [psutil.Process(p.pid) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _get(url: str, **params: str) -> httpx.Response:
    return httpx.get(url, params=params, timeout=30)


def _first_run(tmp_path: Path) -> tuple[AircastRun, str]:
    closed = free_port()  # nothing listens there: the probe fails at once
    app = AircastRun(
        {
            "AIRCAST_STACK__STATE_DIR": str(tmp_path / "state"),
            "AIRCAST_INGEST__LIVE_URL": f"http://127.0.0.1:{closed}/static/v1/data.json",
            # The test's own settings must not leak in: what `make run` reads is what a
            # newcomer's shell gives it.
            "PYTEST_ADDOPTS": "",
        },
        argv=["make", "--no-print-directory", "run"],
    )
    app.wait_running(timeout_s=900)
    base = next(line.split("│")[2].strip() for line in app.lines if "live map" in line)
    return app, base.removesuffix("/ui/")


def _answers(app: AircastRun, base: str, timeout_s: float) -> dict[str, object]:
    """Until the map, the API (sensors, a day of history, a forecast) and the status
    line answer, or ``timeout_s``; what was seen."""
    seen: dict[str, object] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ui = _get(f"{base}/ui/")
            seen["map"] = ui.status_code == 200 and "<html" in ui.text.lower()
            sensors = _get(f"{base}/sensors").json()["sensors"]
            seen["sensors"] = len(sensors)
            if sensors:
                sid = next(s["id"] for s in sensors if "P1" in s["latest"])
                history = _get(f"{base}/sensors/{sid}/readings", measure="P1").json()
                seen["history_points"] = len(history["points"])
                forecast = _get(f"{base}/sensors/{sid}/forecast", measure="P1")
                seen["forecast"] = forecast.status_code
                if forecast.status_code == 200:
                    seen["horizons"] = len(forecast.json()["points"])
        except (httpx.HTTPError, KeyError, ValueError, StopIteration) as exc:
            seen["error"] = repr(exc)
        last = [
            tuple(g for g in m.groups() if g is not None)
            for m in STATUS.finditer("\n".join(app.lines))
        ]
        seen["status"] = last[-1] if last else None
        if (
            seen.get("map")
            and seen.get("forecast") == 200
            and int(str(seen.get("history_points", 0))) >= 100
            and last
            and all(s.startswith("RUNNING") for s in last[-1])
        ):
            return seen
        time.sleep(5)
    return seen


@pytest.mark.parametrize(
    "load",
    [
        pytest.param(False, id="beside-the-suite"),
        pytest.param(True, id="both-cores-busy", marks=pytest.mark.exclusive),
    ],
)
def test_make_run_comes_up_with_map_api_history_and_forecasts(tmp_path: Path, load: bool) -> None:
    started = time.monotonic()
    with busy_cores(2 if load else 0) as spinners:
        app, base = _first_run(tmp_path)
        try:
            up_s = time.monotonic() - started
            seen = _answers(app, base, timeout_s=300)
            answered_s = time.monotonic() - started
            spun = [p.cpu_times().user for p in spinners]
        finally:
            code = app.stop()
    print(f"load={load} up={up_s:.0f}s answering={answered_s:.0f}s seen={seen}")
    assert seen.get("map") is True, (seen, app.out[-4000:])
    assert int(str(seen.get("sensors", 0))) > 0, seen
    # A day of 10-minute aggregates at once: the simulator's history was seeded.
    assert int(str(seen.get("history_points", 0))) >= 100, seen
    assert seen.get("forecast") == 200 and int(str(seen.get("horizons", 0))) > 0, seen
    status = seen["status"]
    assert isinstance(status, tuple) and len(status) == 4, seen  # ingest collect alerts serve
    assert all(s.startswith("RUNNING") for s in status), (
        seen,
        app.out[-4000:],
    )
    assert "SIMULATOR" in app.out
    # make ends by the interrupt it passed on, as at a terminal; aircast run cleaned up.
    assert code in (0, -signal.SIGINT), (code, app.out[-4000:])
    assert "stack stopped; nothing left running" in app.out
    assert not [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(tmp_path) in " ".join(p.info["cmdline"] or [])
    ]
    if load:
        # The load was real: each spinner had most of a core while the pipeline came up.
        assert all(user > 0.5 * answered_s / 2 for user in spun), (spun, answered_s)
