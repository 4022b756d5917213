"""Deploy the app on a running Ray cluster from the settings (CLI, tests, benchmark)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import ray
from ray import serve
from ray.serve.config import HTTPOptions
from ray.serve.schema import LoggingConfig

from aircast.settings import Settings
from serve.app import APP_NAME, build

log = logging.getLogger(__name__)

# Per-request access logs cost about a third of the proxy's throughput here.
QUIET = LoggingConfig(enable_access_log=False)


@dataclass(frozen=True)
class Urls:
    base: str

    @property
    def dashboard(self) -> str:
        return f"{self.base}/ui/"

    @property
    def docs(self) -> str:
        return f"{self.base}/docs"

    @property
    def health(self) -> str:
        return f"{self.base}/health"


def connect(settings: Settings) -> None:
    """Join the cluster named by ``settings.ray.address`` (once per process)."""
    if not ray.is_initialized():
        ray.init(
            address=settings.ray.address,
            namespace=settings.ray.namespace,
            log_to_driver=False,
            configure_logging=False,
        )


def deploy(settings: Settings) -> Urls:
    """Start Serve's HTTP proxy on ``serve.host:serve.port`` (if Serve is not up yet) and
    deploy the app; returns once every replica is healthy."""
    connect(settings)
    s = settings.serve
    serve.start(
        http_options=HTTPOptions(host=s.host, port=s.port),
        logging_config=QUIET,
    )
    prefix = s.route_prefix if s.route_prefix.startswith("/") else f"/{s.route_prefix}"
    serve.run(build(settings), name=APP_NAME, route_prefix=prefix, logging_config=QUIET)
    host = "127.0.0.1" if s.host in ("0.0.0.0", "::") else s.host
    base = f"http://{host}:{s.port}{prefix.rstrip('/')}"
    log.info("serve app deployed app=%s url=%s", APP_NAME, base)
    return Urls(base)


def undeploy() -> None:
    """Shut Serve down on the connected cluster (apps, proxies, controller)."""
    serve.shutdown()  # type: ignore[no-untyped-call]
