"""The Serve application and its builder.

``build_app(args)`` is the application builder KubeRay's RayService (and
``serve run serve.app:build_app config=/etc/aircast/config.yaml``) imports: ``args``
may name a YAML settings file under ``config``; the environment
(``AIRCAST_<SECTION>__<FIELD>``) applies on top, as at every entry point.

Graph: ``Api`` (FastAPI ingress) → ``Forecaster`` (multiplexed models, batched cache
misses) and ``Refresher`` (scheduled recomputation, one replica) → ``Forecaster``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray.serve import Application

from aircast.errors import ConfigError
from aircast.settings import Settings, check_secrets, load_settings
from serve.api import Api
from serve.forecaster import Forecaster
from serve.refresher import Refresher

APP_NAME = "aircast"


def build(settings: Settings) -> Application:
    """The application bound to one frozen settings object."""
    s = settings.serve
    forecaster = Forecaster.options(  # type: ignore[attr-defined]
        num_replicas=s.replicas, max_ongoing_requests=s.max_ongoing_requests
    ).bind(settings)
    refresher = Refresher.bind(settings, forecaster)  # type: ignore[attr-defined]
    api = Api.options(  # type: ignore[attr-defined]
        num_replicas=s.replicas, max_ongoing_requests=s.max_ongoing_requests
    )
    app: Application = api.bind(settings, forecaster, refresher)
    return app


def build_app(args: dict[str, Any]) -> Application:
    """Application builder: ``args`` = ``{"config": "<path to settings YAML>"}`` or ``{}``."""
    unknown = set(args) - {"config"}
    if unknown:
        raise ConfigError(f"unknown application args {sorted(unknown)}; only 'config' is accepted")
    config = args.get("config")
    settings = load_settings(Path(config) if config else None)
    # The API's admin routes and its InfluxDB reads: never with the published local
    # credentials outside the local stack.
    check_secrets(settings, os.environ, ("serve.admin_token", "influx.password"))
    return build(settings)
