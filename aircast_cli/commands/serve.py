"""`aircast serve`: deploy the HTTP API and dashboard (Ray Serve) on the stack's Ray.

The app keeps running on the cluster after the command returns (Serve's controller is
detached); ``aircast serve --down`` shuts Serve down, as does stopping the stack.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from rich.console import Console
from rich.table import Table

from aircast.localhost import ray_environment
from aircast.settings import Settings

console = Console()


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="deploy the HTTP API and live map on Ray Serve")
    p.add_argument("--host", default=None, help="HTTP host (default: serve.host)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default: serve.port)")
    p.add_argument("--down", action="store_true", help="shut the Serve app down instead")
    p.set_defaults(func=cmd_serve)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    # Before Ray is imported: loopback only, no usage stats (as the stack runs it).
    for name, value in ray_environment().items():
        os.environ.setdefault(name, value)
    from serve.deploy import connect, deploy, undeploy

    if args.down:
        connect(settings)
        undeploy()
        console.print("Serve shut down")
        return 0
    update = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if update:
        settings = settings.model_copy(update={"serve": settings.serve.model_copy(update=update)})
    with console.status(f"deploying the Serve app on Ray at {settings.ray.address}..."):
        urls = deploy(settings)
    table = Table(title="aircast HTTP API (Ray Serve)")
    table.add_column("what")
    table.add_column("url")
    table.add_row("live map", urls.dashboard)
    table.add_row("API docs (OpenAPI)", urls.docs)
    table.add_row("health", urls.health)
    table.add_row("sensors", f"{urls.base}/sensors")
    table.add_row("readings", f"{urls.base}/sensors/{{id}}/readings?measure=P2&resolution=10m")
    table.add_row("forecast", f"{urls.base}/sensors/{{id}}/forecast?measure=P2")
    table.add_row("Ray dashboard", f"{settings.ray.dashboard_url}/#/serve")
    console.print(table)
    console.print("stop it with [bold]aircast serve --down[/bold] (or `aircast stack down`)")
    return 0
