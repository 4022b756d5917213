"""`aircast stack up | down | status`: the local single-machine stack.

``up`` chooses free loopback ports (the preferred ones when free), starts the
supervisor detached, waits until every service is healthy, provisions what the
pipeline needs (the InfluxDB admin user and databases with retention, the Kafka
topics), writes ``stack.yaml`` so every later command finds the stack, and returns
the URLs. A second ``up`` while one runs is refused. ``down`` stops the supervisor,
which stops every service; anything that outlived it is killed by process group.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from aircast import tuning
from aircast.errors import StackError, StorageError
from aircast.settings import Settings, stack_file
from aircast_cli.stack.services import Plan, build_services, choose_ports
from aircast_cli.stack.supervisor import kill_group, plan_path, state_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StackInfo:
    state_dir: Path
    supervisor_pid: int
    urls: dict[str, str]
    services: dict[str, dict[str, Any]]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive (it is our own child that exited).
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _read_state(state_dir: Path) -> dict[str, Any] | None:
    path = state_path(state_dir)
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data


def running(state_dir: Path) -> StackInfo | None:
    """The stack running from ``state_dir``, or None."""
    state = _read_state(state_dir)
    if state is None or not _alive(int(state["supervisor_pid"])):
        return None
    urls: dict[str, str] = {}
    for info in state["services"].values():
        urls.update(info["urls"])
    return StackInfo(state_dir, int(state["supervisor_pid"]), urls, state["services"])


def _preferred(settings: Settings) -> dict[str, int]:
    s = settings.stack
    return {
        "redis.port": s.redis_port,
        "kafka.port": s.kafka_port,
        "influxdb.http": s.influx_port,
        "ray.gcs": s.ray_port,
        "ray.dashboard": s.ray_dashboard_port,
    }


# Held from choosing ports until every service listens on its own: two stacks coming
# up at once on one machine (pytest-xdist workers) would otherwise both find a port
# free and both take it, and the second's service fail to bind.
PORTS_LOCK = Path(tempfile.gettempdir()) / "aircast-stack-ports.lock"


@contextlib.contextmanager
def _ports_lock() -> Iterator[None]:
    with open(PORTS_LOCK, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def up(settings: Settings, *, services: tuple[str, ...] | None = None) -> StackInfo:
    with _ports_lock():
        return _up(settings, services=services)


def _up(settings: Settings, *, services: tuple[str, ...] | None = None) -> StackInfo:
    state_dir = settings.stack.state_dir.resolve()
    existing = running(state_dir)
    if existing is not None:
        raise StackError(
            f"a stack is already up from {state_dir} (supervisor pid "
            f"{existing.supervisor_pid}); use `aircast stack status` or `aircast stack down`"
        )
    _cleanup_leftovers(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    wanted = services or settings.stack.services
    password = settings.influx.password.get_secret_value() if settings.influx.password else ""
    from aircast.kafka import all_topics

    plan = Plan(
        state_dir=state_dir,
        services=tuple(wanted),
        ports=choose_ports(tuple(wanted), _preferred(settings)),
        influx_username=settings.influx.username or "aircast",
        influx_password=password or "aircast-local",
        topics=all_topics(settings.kafka),
        flink_python=str(settings.stack.flink.python),
        influx_memory_limit_mb=settings.stack.influx_memory_limit_mb,
    )
    build_services(plan)  # fail fast on a missing binary, before anything starts
    (state_dir / "plan.json").write_text(json.dumps(plan.to_json(), indent=2), encoding="utf-8")
    plan.logs.mkdir(parents=True, exist_ok=True)
    with open(plan.logs / "supervisor.log", "ab") as logfile:
        launcher = subprocess.run(
            [
                sys.executable,
                "-m",
                "aircast_cli.stack.supervisor",
                "--detach",
                str(state_dir),
                str(settings.stack.startup_timeout_s),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=logfile,
            check=False,
            timeout=60,
        )
    if launcher.returncode != 0 or not launcher.stdout.strip().isdigit():
        raise StackError(f"cannot start the stack supervisor; see {plan.logs}/supervisor.log")
    supervisor_pid = int(launcher.stdout.strip())
    # Each service may take up to STACK_START_ATTEMPTS attempts.
    attempts = tuning.STACK_START_ATTEMPTS
    deadline = time.monotonic() + settings.stack.startup_timeout_s * len(wanted) * attempts + 30
    while True:
        state = _read_state(state_dir)
        if state and state.get("ready"):
            break
        if state and state.get("error"):
            _stop_supervisor(state_dir, supervisor_pid)
            raise StackError(f"stack did not start: {state['error']}")
        if not _alive(supervisor_pid):
            _cleanup_leftovers(state_dir)
            raise StackError(f"stack supervisor died; see {plan.logs}/supervisor.log")
        if time.monotonic() > deadline:
            _stop_supervisor(state_dir, supervisor_pid)
            raise StackError(f"stack did not become healthy in time; see {plan.logs}")
        time.sleep(0.2)
    info = running(state_dir)
    assert info is not None
    try:
        _write_stack_settings(plan, settings)
        _provision(load_stack_settings(settings, state_dir))
    except (StorageError, StackError, OSError) as exc:
        _stop_supervisor(state_dir, supervisor_pid)
        raise StackError(f"stack started but provisioning failed: {exc}") from exc
    return info


def load_stack_settings(base: Settings, state_dir: Path) -> Settings:
    """``base`` pointed at the running stack's real ports."""
    overlay = yaml.safe_load(stack_file(state_dir).read_text(encoding="utf-8"))
    data = base.model_dump()
    for section, values in overlay.items():
        if isinstance(values, dict):
            data[section] = {**data.get(section, {}), **values}
    # SecretStr values dump masked; carry the real ones over.
    data["influx"]["password"] = base.influx.password
    data["influx"]["token"] = base.influx.token
    data["redis"]["password"] = base.redis.password
    data["kafka"]["sasl_password"] = base.kafka.sasl_password
    return Settings(**data)


def _write_stack_settings(plan: Plan, settings: Settings) -> None:
    p = plan.ports
    overlay: dict[str, Any] = {
        "stack": {"state_dir": str(plan.state_dir)},
        # Absolute: Ray jobs run in their own working directories, and training and
        # Serve must see the same model registry.
        "train": {
            "registry_dir": str(settings.train.registry_dir.resolve()),
            "storage_path": str(settings.train.storage_path.resolve()),
        },
    }
    if "kafka.port" in p:
        overlay["kafka"] = {"bootstrap_servers": f"127.0.0.1:{p['kafka.port']}"}
    if "influxdb.http" in p:
        overlay["influx"] = {
            "url": f"http://127.0.0.1:{p['influxdb.http']}",
            "username": plan.influx_username,
            "password": plan.influx_password,
        }
    if "redis.port" in p:
        overlay["redis"] = {"url": f"redis://127.0.0.1:{p['redis.port']}/0"}
    if "ray.gcs" in p:
        overlay["ray"] = {
            "address": f"127.0.0.1:{p['ray.gcs']}",
            "dashboard_url": f"http://127.0.0.1:{p['ray.dashboard']}",
        }
    stack_file(plan.state_dir).write_text(
        "# written by `aircast stack up`: the running local stack's endpoints\n"
        + yaml.safe_dump(overlay, sort_keys=True),
        encoding="utf-8",
    )


def _provision(settings: Settings) -> None:
    """No manual steps: the admin user, databases with retention, and topics."""
    plan = Plan.from_json(json.loads(plan_path(settings.stack.state_dir).read_text()))
    if "influxdb" in plan.services:
        _ensure_influx_admin(settings)
        from aircast.influx import InfluxV1

        with InfluxV1(settings.influx) as influx:
            influx.ensure_databases()
    if "kafka" in plan.services:
        from aircast.kafka import ensure_topics

        ensure_topics(settings.kafka)


def _ensure_influx_admin(settings: Settings) -> None:
    """InfluxDB 1.x with auth on accepts exactly one unauthenticated statement: creating
    the first admin user. Do it once; afterwards the credentials must work."""
    url = settings.influx.url
    user = settings.influx.username or "aircast"
    password = settings.influx.password.get_secret_value() if settings.influx.password else ""
    probe = httpx.post(f"{url}/query", data={"q": "SHOW USERS"}, auth=(user, password))
    if probe.status_code == 200:
        return
    escaped = password.replace("\\", "\\\\").replace("'", "\\'")
    created = httpx.post(
        f"{url}/query",
        data={"q": f"CREATE USER \"{user}\" WITH PASSWORD '{escaped}' WITH ALL PRIVILEGES"},
    )
    if created.status_code != 200 or "error" in created.text:
        raise StackError(
            f"cannot create the InfluxDB admin user {user!r} ({created.status_code}): "
            f"{created.text.strip()}; delete {settings.stack.state_dir}/influxdb to start over"
        )
    log.info("influx admin user created user=%s", user)


def _stop_supervisor(state_dir: Path, pid: int, timeout_s: float = 60.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        kill_group(pid, grace_s=1.0)
    _cleanup_leftovers(state_dir)


def _cleanup_leftovers(state_dir: Path) -> None:
    """Kill service process groups a dead supervisor left behind, then any process
    still bound to this stack's folders (Ray's workers carry its temp dir)."""
    state = _read_state(state_dir)
    if state is not None:
        for info in state.get("services", {}).values():
            if info.get("pid"):
                kill_group(int(info["pid"]), grace_s=5.0)
        state_path(state_dir).unlink(missing_ok=True)
    for pid in stack_processes(state_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def stack_processes(state_dir: Path) -> list[int]:
    """PIDs whose command line names this stack's state folder or Ray temp dir."""
    markers = [str(state_dir.resolve())]
    plan_file = plan_path(state_dir)
    if plan_file.is_file():
        markers.append(str(Plan.from_json(json.loads(plan_file.read_text())).ray_temp_dir))
    found: list[int] = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(m in cmdline for m in markers) and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def down(settings: Settings, *, purge: bool = False) -> bool:
    """Stop the stack; True if one was running. Leaves no process behind.

    Ray's temp dir (in /tmp, one per state folder) keeps only its newest session, for
    its logs; ``purge`` (throwaway stacks of tests and benchmarks) removes it whole.
    Without this, every `up` left a session behind, and /tmp filled (11 GB seen)."""
    state_dir = settings.stack.state_dir.resolve()
    info = running(state_dir)
    if info is not None:
        _stop_supervisor(state_dir, info.supervisor_pid)
    else:
        _cleanup_leftovers(state_dir)
    stack_file(state_dir).unlink(missing_ok=True)
    _prune_ray_sessions(state_dir, purge=purge)
    return info is not None


def _prune_ray_sessions(state_dir: Path, *, purge: bool) -> None:
    plan_file = plan_path(state_dir)
    if not plan_file.is_file():
        return
    temp = Plan.from_json(json.loads(plan_file.read_text())).ray_temp_dir
    if not temp.is_dir():
        return
    if purge:
        shutil.rmtree(temp, ignore_errors=True)
        return
    sessions = sorted(
        (p for p in temp.glob("session_2*") if p.is_dir() and not p.is_symlink()),
        key=lambda p: p.stat().st_mtime,
    )
    for old in sessions[:-1]:
        shutil.rmtree(old, ignore_errors=True)


def status(settings: Settings) -> dict[str, dict[str, Any]]:
    """Each service's recorded state plus a live health probe."""
    state_dir = settings.stack.state_dir.resolve()
    info = running(state_dir)
    if info is None:
        raise StackError(f"no stack is up from {state_dir}; run `aircast stack up`")
    plan = Plan.from_json(json.loads(plan_path(state_dir).read_text(encoding="utf-8")))
    report: dict[str, dict[str, Any]] = {}
    for service in build_services(plan):
        recorded = info.services.get(service.name, {})
        alive = bool(recorded.get("pid")) and _alive(int(recorded["pid"]))
        healthy = (
            service.health()
            if service.ready_marker is None
            else (alive and recorded.get("status") == "healthy" and service.health())
        )
        report[service.name] = {
            "status": recorded.get("status", "unknown"),
            "healthy": healthy,
            "pid": recorded.get("pid"),
            "restarts": recorded.get("restarts", 0),
            "urls": service.urls,
        }
    return report
