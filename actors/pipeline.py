"""The whole pipeline on a running cluster, as its users run it: ingestion, collection
and (when ``alerts.enabled``) alert evaluation submitted as Ray jobs (visible in the Ray
dashboard's Jobs tab, stoppable with ``ray job stop``), and the HTTP API deployed on Ray
Serve from a Serve config through the dashboard's REST API (what ``serve deploy`` and the
RayService do). The PyFlink job runs beside Ray (a supervised service of the local stack;
a FlinkDeployment on Kubernetes).

Everything here talks to the cluster over HTTP only: the process running the pipeline
(`aircast run`) is never a Ray driver, so it outlives a restart of the Ray head, finds
the jobs and the app gone and submits and deploys them again (:meth:`Running.revive`).
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from dataclasses import dataclass, field

from ray.dashboard.modules.serve.sdk import ServeSubmissionClient
from ray.job_submission import JobDetails, JobStatus, JobSubmissionClient

from aircast import tuning
from aircast.errors import AircastError
from aircast.localhost import free_port, port_is_free, ray_environment
from aircast.retry import Backoff
from aircast.settings import Settings, stack_file
from serve.app import APP_NAME, build_app
from serve.deploy import QUIET

log = logging.getLogger(__name__)

JOBS = {"ingest": "actors.ingest", "collect": "actors.collect"}
# Submitted beside JOBS when settings.alerts.enabled.
ALERTS_JOB = ("alerts", "actors.alerts")
# The Serve app's builder, as the RayService's serveConfigV2 names it.
APP_IMPORT_PATH = f"{build_app.__module__}:{build_app.__name__}"


@dataclass
class Job:
    """One submitted pipeline job and its resubmissions."""

    submission_id: str
    restarts: int = 0
    failures_in_row: int = 0
    retry_at: float | None = None  # monotonic; set while a failed job waits out its backoff
    stopped: bool = False  # seen STOPPED (ray job stop, the dashboard): never resubmitted


@dataclass
class Running:
    client: JobSubmissionClient
    entrypoints: dict[str, str] = field(default_factory=dict)  # name → command line
    runtime_env: dict[str, object] = field(default_factory=dict)
    submitted: dict[str, Job] = field(default_factory=dict)
    serve: ServeSubmissionClient | None = None
    serve_config: dict[str, object] | None = None  # a Serve deploy config (serve deploy)
    serve_url: str | None = None
    serve_failures: int = 0  # failed deploys in a row
    serve_retry_at: float | None = None  # monotonic; set while a failed deploy waits
    serve_deploys: int = 0  # deploys after the first (failed ones retried, or app lost)

    @property
    def jobs(self) -> dict[str, str]:
        """Name → the current submission id."""
        return {name: job.submission_id for name, job in self.submitted.items()}

    def submit(self, name: str) -> str:
        entrypoint = self.entrypoints[name]
        job_id = self.client.submit_job(
            entrypoint=entrypoint,
            # Nanoseconds: a resubmission in the same second needs an id of its own.
            submission_id=f"aircast-{name}-{time.time_ns()}",
            runtime_env=self.runtime_env,
            metadata={"aircast": name},
        )
        log.info("ray job submitted name=%s id=%s entrypoint=%r", name, job_id, entrypoint)
        return job_id

    def _known(self) -> dict[str, JobDetails]:
        """The cluster's jobs by submission id (one request for all of them)."""
        return {j.submission_id: j for j in self.client.list_jobs() if j.submission_id}

    def app_status(self) -> str | None:
        """The Serve app's status (RUNNING, DEPLOYING, ...); None when there is none."""
        if self.serve is None:
            return None
        apps = self.serve.get_serve_details().get("applications") or {}
        app = apps.get(APP_NAME)
        return str(app["status"]) if app else None

    def deploy_serve(self, timeout_s: float = tuning.SERVE_DEPLOY_TIMEOUT_S) -> None:
        """Deploy the Serve config and wait until the app is RUNNING; raises
        :class:`AircastError` if the deploy is refused, fails or times out."""
        assert self.serve is not None and self.serve_config is not None
        try:
            self.serve.deploy_applications(self.serve_config)
        except RuntimeError as exc:  # the dashboard's HTTP 500: Serve could not start
            raise AircastError(f"Serve deploy refused: {_first_line(exc)}") from exc
        deadline = time.monotonic() + timeout_s
        while (status := self.app_status()) != "RUNNING":
            if status == "DEPLOY_FAILED" or time.monotonic() > deadline:
                apps = self.serve.get_serve_details().get("applications") or {}
                message = (apps.get(APP_NAME) or {}).get("message", "")
                raise AircastError(f"Serve app {APP_NAME} not running ({status}): {message}")
            time.sleep(1)
        log.info("serve app deployed app=%s url=%s", APP_NAME, self.serve_url)

    def try_deploy_serve(self, timeout_s: float = tuning.SERVE_DEPLOY_TIMEOUT_S) -> bool:
        """:meth:`deploy_serve`; on failure one log line and a retry scheduled with
        backoff (:meth:`revive` makes it), never an exception: one failed deploy must not
        stop the stack and the jobs."""
        try:
            self.deploy_serve(timeout_s)
        except Exception as exc:
            self._serve_failed(exc)
            return False
        self.serve_failures = 0
        self.serve_retry_at = None
        return True

    def _serve_failed(self, exc: BaseException) -> None:
        self.serve_failures += 1
        wait = Backoff(*tuning.SERVE_REDEPLOY_BACKOFF_S).wait(self.serve_failures)
        self.serve_retry_at = time.monotonic() + wait
        log.warning(
            "serve deploy failed app=%s attempt=%d error=%s; retrying in %.0f s",
            APP_NAME,
            self.serve_failures,
            _first_line(exc),
            wait,
        )

    def serve_state(self) -> str:
        """The Serve app's status for the status line, with a pending retry's wait."""
        status = self.app_status() or "NONE"
        if self.serve_retry_at is not None:
            left = max(0.0, self.serve_retry_at - time.monotonic())
            status += f"(deploy_failures={self.serve_failures},retry_in={left:.0f}s)"
        elif self.serve_deploys:
            status += f"(redeploys={self.serve_deploys})"
        return status

    def statuses(self) -> dict[str, str]:
        known = self._known()
        out = {}
        for name, job in self.submitted.items():
            info = known.get(job.submission_id)
            if info is not None:
                state = str(info.status.value)
            else:  # a new head: the job is gone (stopped before, or not resubmitted yet)
                state = "STOPPED" if job.stopped else "LOST"
            out[name] = state + (f"(restarts={job.restarts})" if job.restarts else "")
        if self.serve_config is not None:
            out["serve"] = self.serve_state()
        return out

    def revive(self) -> list[str]:
        """Resubmit every job that FAILED (its driver or the job's supervisor died, e.g.
        killed by Ray's memory monitor) or that the cluster no longer knows (its head
        restarted), and deploy the Serve app again when the cluster has none; one line
        for each thing done. A job stopped on purpose (``ray job stop``, the dashboard)
        stays stopped. Nothing is lost by a restart: the ingest's seen-keys (Redis) and
        the collectors' committed offsets (Kafka) carry over, and the Flink job drops a
        reading it has already passed on."""
        now = time.monotonic()
        done = []
        known = self._known()
        for name, job in self.submitted.items():
            if job.retry_at is None:
                if job.stopped:
                    continue
                info = known.get(job.submission_id)
                if info is None:
                    # A new head (no GCS fault tolerance locally) starts with no jobs.
                    log.warning(
                        "ray job lost name=%s id=%s: the cluster does not know it (its head "
                        "restarted?); resubmitting",
                        name,
                        job.submission_id,
                    )
                    if self._resubmit(job, name):
                        done.append(f"ray job {name} lost (Ray head restarted?): resubmitted")
                    continue
                if info.status == JobStatus.STOPPED:
                    job.stopped = True  # and stays so, even if the head restarts
                if info.status != JobStatus.FAILED:
                    continue
                ran_s = ((info.end_time or 0) - (info.start_time or 0)) / 1000
                if ran_s >= tuning.JOB_HEALTHY_RUN_S:
                    job.failures_in_row = 0
                job.failures_in_row += 1
                wait = Backoff(*tuning.JOB_RESUBMIT_BACKOFF_S).wait(job.failures_in_row)
                job.retry_at = now + wait
                log.warning(
                    "ray job failed name=%s id=%s ran_s=%.0f message=%r; resubmitting in %.0f s",
                    name,
                    job.submission_id,
                    ran_s,
                    (info.message or "")[-300:],
                    wait,
                )
            if now < job.retry_at:
                continue
            if self._resubmit(job, name):
                job.retry_at = None
                done.append(f"ray job {name} failed: resubmitted")
        if self.serve_config is not None:
            what = self._revive_serve(now)
            if what:
                done.append(what)
        return done

    def _revive_serve(self, now: float) -> str | None:
        """Deploy the app again when a failed deploy's backoff is over, or when the
        cluster has none (its head restarted) or reports DEPLOY_FAILED; not waited for:
        the status line shows DEPLOYING, then RUNNING."""
        assert self.serve is not None and self.serve_config is not None
        if self.serve_retry_at is not None and now < self.serve_retry_at:
            return None
        try:
            status = self.app_status()
        except Exception as exc:  # a head still starting: tried again next time
            log.warning("serve app check failed app=%s error=%s", APP_NAME, _first_line(exc))
            return None
        if self.serve_retry_at is None and status not in (None, "DEPLOY_FAILED"):
            return None
        why = (
            "retrying a failed deploy"
            if self.serve_retry_at is not None
            else ("the cluster has none" if status is None else status)
        )
        log.warning("serve app deploying again app=%s why=%s", APP_NAME, why)
        try:
            self.serve.deploy_applications(self.serve_config)
        except Exception as exc:
            self._serve_failed(exc)
            return f"Serve app {APP_NAME}: deploy failed again ({why}); retrying with backoff"
        self.serve_retry_at = None
        self.serve_failures = 0
        self.serve_deploys += 1
        lost = " lost (Ray head restarted?):" if status is None and "retry" not in why else ":"
        return f"Serve app {APP_NAME}{lost} redeployed ({why})"

    def _resubmit(self, job: Job, name: str) -> bool:
        """Submit the job again; False (tried again next time) if the cluster refused."""
        try:
            job.submission_id = self.submit(name)
        except Exception as exc:  # a head still starting: tried again next time
            log.warning("ray job resubmission failed name=%s error=%s", name, exc)
            return False
        job.restarts += 1
        return True


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    # Ray's remote errors end with the useful line; a traceback starts with "Traceback".
    useful = [line for line in lines if not line.startswith(("Traceback", "  "))]
    return (useful[-1] if useful else type(exc).__name__)[:300]


def prepare(settings: Settings, source: str) -> Running:
    """The pipeline's client side: what to submit and in which environment (nothing is
    submitted yet: :func:`deploy_serve`, then :func:`submit_jobs`)."""
    client = JobSubmissionClient(settings.ray.dashboard_url)
    config = stack_file(settings.stack.state_dir.resolve())
    env = {**ray_environment(), "AIRCAST_INGEST__SOURCE": source}
    if config.is_file():
        env["AIRCAST_CONFIG"] = str(config)
    running = Running(client, runtime_env={"env_vars": env})
    jobs = dict(JOBS)
    if settings.alerts.enabled:
        jobs[ALERTS_JOB[0]] = ALERTS_JOB[1]
    for name, module in jobs.items():
        running.entrypoints[name] = f"{shlex.quote(sys.executable)} -m {module}"
    return running


def submit_jobs(running: Running) -> None:
    """Submit the prepared jobs (ingestion, collection, alerts) to the cluster's job API."""
    for name in running.entrypoints:
        running.submitted[name] = Job(running.submit(name))


def serve_config(settings: Settings, env: dict[str, str]) -> dict[str, object]:
    """The Serve deploy config of the app (the RayService's, with this stack's host,
    port and environment): the app's builder reads its settings from that environment."""
    s = settings.serve
    prefix = s.route_prefix if s.route_prefix.startswith("/") else f"/{s.route_prefix}"
    quiet = QUIET.dict(exclude_unset=True)
    return {
        "http_options": {"host": s.host, "port": s.port},
        "logging_config": quiet,
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": prefix,
                "import_path": APP_IMPORT_PATH,
                "args": {},
                "runtime_env": {"env_vars": env},
                "logging_config": quiet,
            }
        ],
    }


def deploy_serve(settings: Settings, running: Running) -> Settings:
    """Deploy the Serve app on a free port (the configured one when free) and wait until
    it runs, or schedule its retry (:meth:`Running.try_deploy_serve`); the settings with
    that port.

    Called before the jobs are submitted: Serve's proxy must answer its readiness check
    within ``RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S`` of its creation, and the raylet
    starts at most as many worker processes at once as the node has cores, so a proxy
    created while the jobs' actors start waits in that queue (see
    :func:`aircast_cli.stack.services.ray_head_environment`)."""
    port = settings.serve.port if port_is_free(settings.serve.port) else free_port()
    settings = settings.model_copy(
        update={"serve": settings.serve.model_copy(update={"port": port})}
    )
    env_vars = running.runtime_env.get("env_vars")
    env = {str(k): str(v) for k, v in env_vars.items()} if isinstance(env_vars, dict) else {}
    env["AIRCAST_SERVE__PORT"] = str(port)
    running.serve = ServeSubmissionClient(settings.ray.dashboard_url)
    running.serve_config = serve_config(settings, env)
    s = settings.serve
    host = "127.0.0.1" if s.host in ("0.0.0.0", "::") else s.host
    prefix = s.route_prefix if s.route_prefix.startswith("/") else f"/{s.route_prefix}"
    running.serve_url = f"http://{host}:{port}{prefix.rstrip('/')}"
    running.try_deploy_serve()
    return settings


def stop(running: Running, timeout_s: float = 30.0) -> None:
    """Stop the submitted jobs (and wait until they are) and shut Serve down. A job the
    cluster no longer knows (its head restarted) has nothing left to stop.

    The jobs are told to stop first and Serve is taken down while they do: neither
    needs the other, and each takes seconds (a job's driver its stop grace, Serve its
    replicas' drain), so Ctrl-C waits for the longer of the two, not their sum."""
    started = time.monotonic()
    for name, job_id in running.jobs.items():
        try:
            running.client.stop_job(job_id)
        except RuntimeError as exc:
            log.warning("ray job stop failed name=%s error=%s", name, exc)
    if running.serve is not None:
        try:
            # serve shutdown: the apps, proxies and controller.
            # Ray's SDK leaves this method unannotated.
            running.serve.delete_applications()  # type: ignore[no-untyped-call]
        except RuntimeError as exc:
            log.warning("serve shutdown failed error=%s", exc)
    deadline = started + timeout_s
    for job_id in running.jobs.values():
        while time.monotonic() < deadline:
            try:
                status = running.client.get_job_status(job_id)
            except RuntimeError:  # not known to the cluster
                break
            if status in (JobStatus.STOPPED, JobStatus.SUCCEEDED, JobStatus.FAILED):
                break
            time.sleep(0.5)
    log.info("pipeline stopped in %.1f s", time.monotonic() - started)
