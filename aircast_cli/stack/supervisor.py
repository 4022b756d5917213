"""The stack supervisor: a detached process that owns every service of the local stack.

``aircast stack up`` writes ``plan.json`` and starts ``python -m aircast_cli.stack.supervisor
STATE_DIR``. The supervisor starts each service in its own process group, waits for it
to be healthy, then watches: a service that exits unexpectedly is restarted (with
backoff, at most ``STACK_MAX_RESTARTS`` in ``STACK_RESTART_WINDOW_S``, both in
:mod:`aircast.tuning`). On SIGTERM or SIGINT it stops the services in reverse order
(SIGTERM to the whole group, SIGKILL after a grace period) and removes its state file,
so nothing is left behind.

State is published in ``state.json`` (written atomically) for ``stack status``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from aircast import tuning
from aircast_cli.stack.services import Plan, Service, build_services

log = logging.getLogger("aircast_cli.stack")


def state_path(state_dir: Path) -> Path:
    return state_dir / "state.json"


def plan_path(state_dir: Path) -> Path:
    return state_dir / "plan.json"


def write_json(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def _group_alive(pid: int, process: subprocess.Popen[bytes] | None) -> bool:
    if process is not None:
        process.poll()  # reap the leader: a zombie would keep the group "alive"
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_group(pid: int, process: subprocess.Popen[bytes] | None, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _group_alive(pid, process):
            return True
        time.sleep(0.1)
    return not _group_alive(pid, process)


def kill_group(
    pid: int,
    grace_s: float = tuning.STACK_STOP_GRACE_S,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Stop the process group led by ``pid``.

    SIGTERM goes to the leader first, so a parent that shuts its children down in order
    (``ray start --block``) can; then to the whole group; SIGKILL to whatever outlives
    the grace period. ``process`` is the leader when it is our child, reaped while we wait.
    """
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    if process is not None:
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    if _wait_group(pid, process, 1.0 if process is not None else grace_s):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if _wait_group(pid, process, 3.0):
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    _wait_group(pid, process, 5.0)


def stop_strays(service: Service) -> None:
    """Stop the process groups the service left outside its own (Ray's job drivers)."""
    if service.strays is None:
        return
    for pgid in service.strays():
        log.warning("stray process group stopping service=%s pgid=%d", service.name, pgid)
        kill_group(pgid, grace_s=5.0)


@dataclass
class Running:
    service: Service
    process: subprocess.Popen[bytes] | None = None
    status: str = "starting"
    restarts: list[float] = field(default_factory=list)
    started_at: float = 0.0
    log_offset: int = 0  # size of its log when it was (re)started


class Supervisor:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.running = [Running(s) for s in build_services(plan)]
        self.stopping = False
        self.ready = False
        self.error: str | None = None

    # -- processes ---------------------------------------------------------------

    def _spawn(self, item: Running) -> None:
        service = item.service
        if service.prepare is not None:
            service.prepare()
        self.plan.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.plan.logs / f"{service.name}.log"
        item.log_offset = log_path.stat().st_size if log_path.exists() else 0
        logfile = open(log_path, "ab")  # noqa: SIM115
        env = {**os.environ, **service.env}
        item.process = subprocess.Popen(
            service.argv,
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.plan.state_dir,
            start_new_session=True,  # its own group: one killpg stops all its children
        )
        logfile.close()
        item.started_at = time.monotonic()
        item.status = "starting"
        log.info("service started name=%s pid=%d", service.name, item.process.pid)

    def _wait_healthy(self, item: Running, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.stopping:
            if item.process is not None and item.process.poll() is not None:
                return False
            if item.service.health() and self._marker_seen(item):
                item.status = "healthy"
                return True
            time.sleep(0.2)
        return False

    def _marker_seen(self, item: Running) -> bool:
        marker = item.service.ready_marker
        if marker is None:
            return True
        try:
            with open(self.plan.logs / f"{item.service.name}.log", "rb") as fh:
                fh.seek(item.log_offset)
                return marker.encode() in fh.read()
        except OSError:
            return False

    def _publish(self) -> None:
        write_json(
            state_path(self.plan.state_dir),
            {
                "supervisor_pid": os.getpid(),
                "ready": self.ready,
                "error": self.error,
                "services": {
                    r.service.name: {
                        "pid": r.process.pid if r.process else None,
                        "status": r.status,
                        "restarts": len(r.restarts),
                        "urls": r.service.urls,
                    }
                    for r in self.running
                },
            },
        )

    # -- lifecycle ---------------------------------------------------------------

    def start(self, timeout_s: float) -> bool:
        for item in self.running:
            for attempt in range(1, tuning.STACK_START_ATTEMPTS + 1):
                self._spawn(item)
                self._publish()
                if self._wait_healthy(item, timeout_s):
                    break
                code = item.process.poll() if item.process else None
                if self.stopping or attempt == tuning.STACK_START_ATTEMPTS:
                    if item.process is not None:
                        kill_group(item.process.pid, grace_s=5.0, process=item.process)
                    self.error = (
                        f"{item.service.name} did not become healthy within {timeout_s:.0f}s"
                        + (f" (exited with {code})" if code is not None else "")
                        + f" in {attempt} attempts; see "
                        + str(self.plan.logs / (item.service.name + ".log"))
                    )
                    item.status = "failed"
                    log.error("service failed name=%s error=%s", item.service.name, self.error)
                    self._publish()
                    return False
                # Exited while starting, or still running but never ready: on a busy
                # machine one of Ray's own start-up waits (the raylet's for its agent,
                # its registration with the GCS) can run out and leave a head that never
                # comes up. Its whole group goes, and a fresh start is tried.
                kill_group(item.process.pid, grace_s=5.0, process=item.process)  # type: ignore[union-attr]
                log.warning(
                    "service not ready, starting it again name=%s exit=%s attempt=%d/%d",
                    item.service.name,
                    code,
                    attempt,
                    tuning.STACK_START_ATTEMPTS,
                )
            log.info("service healthy name=%s urls=%s", item.service.name, item.service.urls)
            self._publish()
        self.ready = True
        self._publish()
        return True

    def watch(self, timeout_s: float) -> None:
        while not self.stopping:
            for item in self.running:
                if self.stopping or item.process is None:
                    break
                code = item.process.poll()
                if code is None:
                    continue
                now = time.monotonic()
                item.restarts = [
                    t for t in item.restarts if now - t < tuning.STACK_RESTART_WINDOW_S
                ]
                if len(item.restarts) >= tuning.STACK_MAX_RESTARTS:
                    item.status = "failed"
                    log.error(
                        "service gave up name=%s exit=%s restarts=%d",
                        item.service.name,
                        code,
                        len(item.restarts),
                    )
                    self._publish()
                    continue
                # Reap what the dead leader left in its group, and outside it, before
                # starting afresh.
                kill_group(item.process.pid, grace_s=2.0, process=item.process)
                stop_strays(item.service)
                item.restarts.append(now)
                log.warning(
                    "service exited name=%s exit=%s restarting attempt=%d",
                    item.service.name,
                    code,
                    len(item.restarts),
                )
                time.sleep(min(2 ** len(item.restarts) * 0.25, 5.0))
                self._spawn(item)
                self._publish()
                ok = self._wait_healthy(item, timeout_s)
                item.status = "healthy" if ok else "unhealthy"
                self._publish()
            time.sleep(0.5)

    def stop(self) -> None:
        self.stopping = True
        for item in reversed(self.running):
            if item.process is None:
                continue
            log.info("service stopping name=%s pid=%d", item.service.name, item.process.pid)
            kill_group(item.process.pid, process=item.process)
            stop_strays(item.service)
            item.status = "stopped"
        state_path(self.plan.state_dir).unlink(missing_ok=True)
        log.info("stack stopped")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "--detach":
        # Classic daemon: the caller's child exits at once (nothing left to reap) and
        # the supervisor lives on in its own session, adopted by init.
        args = args[1:]
        child = os.fork()
        if child > 0:
            print(child, flush=True)
            os._exit(0)
        os.setsid()
        # Let go of the caller's stdout pipe (it waits for EOF); logs go to stderr.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    state_dir = Path(args[0])
    timeout_s = float(args[1]) if len(args) > 1 else 90.0
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # One line per service event: not every health probe's request (several a second
    # while a service starts) nor every broker connection of the topic check.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    plan = Plan.from_json(json.loads(plan_path(state_dir).read_text(encoding="utf-8")))
    supervisor = Supervisor(plan)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        supervisor.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if supervisor.start(timeout_s):
            supervisor.watch(timeout_s)
        else:
            # Stay until told to stop so `up` can read the error; then clean up.
            while not supervisor.stopping:
                time.sleep(0.2)
    finally:
        supervisor.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
