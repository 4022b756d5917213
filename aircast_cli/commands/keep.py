"""`aircast keep`: keep the streaming stages (ingest, collect) running on a Ray cluster.

The Ray jobs of the streaming stages run until stopped, and nothing in Ray brings a
FAILED job back (its driver died, or the head restarted and forgot it). Locally
`aircast run` resubmits them; on Kubernetes this command does, as a small Deployment
beside the pipeline RayCluster (kuberay/base/ray/keeper.yaml). It is the same logic
(:meth:`actors.pipeline.Running.revive`: backoff 5 s doubling to 5 min, a job stopped on
purpose stays stopped), over the dashboard's HTTP job API only, so the keeper is never
a Ray driver and outlives a head restart.

It adopts what is already running: a restarted keeper (a rolling update, a lost node)
finds each stage's newest PENDING or RUNNING job by its metadata and keeps that one,
never submitting a second copy beside it (two collectors on the same partitions would
race their offset commits). Stopping the keeper leaves the jobs running.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time
from pathlib import Path
from types import FrameType
from typing import Any

from aircast.localhost import ray_environment
from aircast.settings import Settings

log = logging.getLogger("aircast.keep")

STAGES = {"ingest": "actors.ingest", "collect": "actors.collect"}
ALIVE = ("PENDING", "RUNNING")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "keep", help="keep the ingest and collect Ray jobs running (resubmit when they fail)"
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="STAGE:NAME=VALUE",
        help="an environment variable for one stage's job (repeatable); a ${VAR} value "
        "is expanded by Ray on the cluster's pods, never here",
    )
    p.add_argument("--python", default="python", help="the cluster's interpreter")
    p.add_argument("--every", type=float, default=5.0, help="seconds between checks")
    p.add_argument(
        "--alive-file",
        type=Path,
        default=None,
        help="touched after every check, answered or not (liveness)",
    )
    p.set_defaults(func=cmd_keep)


def stage_env(pairs: list[str]) -> dict[str, dict[str, str]]:
    """``STAGE:NAME=VALUE`` options → each stage's variables."""
    out: dict[str, dict[str, str]] = {name: {} for name in STAGES}
    for pair in pairs:
        stage, sep, assignment = pair.partition(":")
        name, eq, value = assignment.partition("=")
        if not sep or not eq or stage not in STAGES or not name:
            raise SystemExit(f"--env {pair!r}: expected STAGE:NAME=VALUE, STAGE in {list(STAGES)}")
        out[stage][name] = value
    return out


def cmd_keep(settings: Settings, args: argparse.Namespace) -> int:
    for name, value in ray_environment().items():
        os.environ.setdefault(name, value)
    from ray.job_submission import JobSubmissionClient

    from actors.pipeline import Running

    envs = stage_env(args.env)

    class Keeper(Running):
        def submit(self, name: str) -> str:
            self.runtime_env = {"env_vars": envs[name]}
            return super().submit(name)

    # The client is made per check until one answers: its constructor already asks the
    # dashboard, which may not be up yet (a keeper starting with the cluster, a head
    # restarting); waiting here, not crashing, keeps the pod out of a restart loop.
    keeper: Keeper | None = None
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    last: dict[str, str] = {}
    while not stop:
        try:
            if keeper is None:
                fresh = Keeper(JobSubmissionClient(settings.ray.dashboard_url))
                for name, module in STAGES.items():
                    fresh.entrypoints[name] = f"{args.python} -m {module}"
                fresh.submitted.update(adopt(fresh))
                keeper = fresh
            for what in keeper.revive():
                log.warning("%s", what)
            states = keeper.statuses()
        except Exception as exc:  # the dashboard (re)starting: the next check tries again
            log.warning("keeper check failed url=%s error=%s", settings.ray.dashboard_url, exc)
        else:
            if states != last:
                log.info("pipeline jobs %s", " ".join(f"{k}={v}" for k, v in states.items()))
                last = states
        # Liveness: the loop goes on, whether the dashboard answered or not. A check that
        # hangs stops the touches, and the probe restarts the keeper.
        if args.alive_file is not None:
            args.alive_file.touch()
        deadline = time.monotonic() + args.every
        while not stop and time.monotonic() < deadline:
            time.sleep(0.2)
    log.info("keeper stopped; the jobs keep running")
    return 0


def adopt(keeper: Any) -> dict[str, Any]:
    """Each stage's job: the newest PENDING or RUNNING one already on the cluster
    (adopted), else a new submission."""
    from actors.pipeline import Job

    jobs = keeper.client.list_jobs()
    out: dict[str, Any] = {}
    for name in STAGES:
        alive = [
            j
            for j in jobs
            if (j.metadata or {}).get("aircast") == name
            and str(j.status.value) in ALIVE
            and j.submission_id
        ]
        if alive:
            newest = max(alive, key=lambda j: j.start_time or 0)
            log.info("ray job adopted name=%s id=%s", name, newest.submission_id)
            out[name] = Job(newest.submission_id)
        else:
            out[name] = Job(keeper.submit(name))
    return out
