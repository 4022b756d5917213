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


@dataclass
class Running:
    client: JobSubmissionClient
    jobs: dict[str, str] = field(default_factory=dict)  # name → submission id
    serve_url: str | None = None

    def statuses(self) -> dict[str, str]:
        return {
            name: str(self.client.get_job_status(job_id).value)
            for name, job_id in self.jobs.items()
        }


def submit_jobs(settings: Settings, source: str) -> Running:
    """Submit ingestion and collection to the cluster's job API."""
    client = JobSubmissionClient(settings.ray.dashboard_url)
    config = stack_file(settings.stack.state_dir.resolve())
    env = {**ray_environment(), "AIRCAST_INGEST__SOURCE": source}
    if config.is_file():
        env["AIRCAST_CONFIG"] = str(config)
    running = Running(client)
    for name, module in JOBS.items():
        entrypoint = f"{shlex.quote(sys.executable)} -m {module}"
        job_id = client.submit_job(
            entrypoint=entrypoint,
            submission_id=f"aircast-{name}-{int(time.time())}",
            runtime_env={"env_vars": env},
            metadata={"aircast": name},
        )
        running.jobs[name] = job_id
        log.info("ray job submitted name=%s id=%s entrypoint=%r", name, job_id, entrypoint)
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
