"""The whole pipeline on a running cluster, as its users run it: ingestion and
collection submitted as Ray jobs (visible in the Ray dashboard's Jobs tab, stoppable
with ``ray job stop``), and the HTTP API deployed on Ray Serve. The PyFlink job runs
beside Ray (a supervised service of the local stack; a FlinkDeployment on Kubernetes).
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from dataclasses import dataclass, field

from ray.job_submission import JobStatus, JobSubmissionClient

from aircast.settings import Settings, stack_file
from aircast.stack.services import free_port, port_is_free, ray_environment

log = logging.getLogger(__name__)

JOBS = {"ingest": "actors.ingest", "collect": "actors.collect"}


# A failed job is resubmitted after this long, doubled on each failure in a row (up to
# the cap): a job that cannot start (bad settings) is retried slowly, not in a loop.
RESUBMIT_BACKOFF_S = 5.0
RESUBMIT_BACKOFF_MAX_S = 300.0
# A job that ran this long before it failed starts its backoff again from the first step.
HEALTHY_RUN_S = 600.0


@dataclass
class Job:
    """One submitted pipeline job and its resubmissions."""

    submission_id: str
    restarts: int = 0
    failures_in_row: int = 0
    retry_at: float | None = None  # monotonic; set while a failed job waits out its backoff


@dataclass
class Running:
    client: JobSubmissionClient
    entrypoints: dict[str, str] = field(default_factory=dict)  # name → command line
    runtime_env: dict[str, object] = field(default_factory=dict)
    submitted: dict[str, Job] = field(default_factory=dict)
    serve_url: str | None = None

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

    def statuses(self) -> dict[str, str]:
        out = {}
        for name, job in self.submitted.items():
            state = str(self.client.get_job_status(job.submission_id).value)
            out[name] = state + (f"(restarts={job.restarts})" if job.restarts else "")
        return out

    def revive(self) -> list[str]:
        """Resubmit every job that FAILED (its driver or the job's supervisor died, e.g.
        killed by Ray's memory monitor); the names resubmitted. A job stopped on purpose
        (``ray job stop``, the dashboard) stays stopped. Nothing is lost by a restart:
        the ingest's seen-keys (Redis) and the collectors' committed offsets (Kafka)
        carry over, and the Flink job drops a reading it has already passed on."""
        now = time.monotonic()
        revived = []
        for name, job in self.submitted.items():
            if job.retry_at is None:
                info = self.client.get_job_info(job.submission_id)
                if info.status != JobStatus.FAILED:
                    continue
                ran_s = ((info.end_time or 0) - (info.start_time or 0)) / 1000
                if ran_s >= HEALTHY_RUN_S:
                    job.failures_in_row = 0
                wait = min(RESUBMIT_BACKOFF_MAX_S, RESUBMIT_BACKOFF_S * 2**job.failures_in_row)
                job.failures_in_row += 1
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
            job.submission_id = self.submit(name)
            job.restarts += 1
            job.retry_at = None
            revived.append(name)
        return revived


def submit_jobs(settings: Settings, source: str) -> Running:
    """Submit ingestion and collection to the cluster's job API."""
    client = JobSubmissionClient(settings.ray.dashboard_url)
    config = stack_file(settings.stack.state_dir.resolve())
    env = {**ray_environment(), "AIRCAST_INGEST__SOURCE": source}
    if config.is_file():
        env["AIRCAST_CONFIG"] = str(config)
    running = Running(client, runtime_env={"env_vars": env})
    for name, module in JOBS.items():
        running.entrypoints[name] = f"{shlex.quote(sys.executable)} -m {module}"
        running.submitted[name] = Job(running.submit(name))
    return running


def deploy_serve(settings: Settings) -> tuple[Settings, str]:
    """Deploy the Serve app on a free port (the configured one when free)."""
    from serve.deploy import deploy

    port = settings.serve.port if port_is_free(settings.serve.port) else free_port()
    settings = settings.model_copy(
        update={"serve": settings.serve.model_copy(update={"port": port})}
    )
    urls = deploy(settings)
    return settings, urls.base


def stop(running: Running, timeout_s: float = 30.0) -> None:
    """Stop the submitted jobs (and wait until they are) and shut Serve down."""
    for name, job_id in running.jobs.items():
        try:
            running.client.stop_job(job_id)
        except RuntimeError as exc:
            log.warning("ray job stop failed name=%s error=%s", name, exc)
    deadline = time.monotonic() + timeout_s
    for job_id in running.jobs.values():
        while time.monotonic() < deadline:
            if running.client.get_job_status(job_id) in (
                JobStatus.STOPPED,
                JobStatus.SUCCEEDED,
                JobStatus.FAILED,
            ):
                break
            time.sleep(0.5)
    if running.serve_url:
        from serve.deploy import undeploy

        undeploy()
