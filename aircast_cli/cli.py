"""The `aircast` command line: the one entry point that builds the settings.

aircast stack up | down | status     the local single-machine stack
aircast run                          stack up + the pipeline, until Ctrl-C
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import pkgutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.table import Table

from aircast.errors import AircastError
from aircast.settings import Settings, load_settings
from aircast_cli.stack import control

console = Console(stderr=False)
err = Console(stderr=True)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # kafka-python is chatty at INFO about every connection.
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def print_urls(info: control.StackInfo) -> None:
    table = Table(title=f"aircast local stack ({info.state_dir})")
    table.add_column("service")
    table.add_column("url")
    for name, url in sorted(info.urls.items()):
        table.add_row(name, url)
    console.print(table)


def cmd_stack_up(settings: Settings, args: argparse.Namespace) -> int:
    services = tuple(args.services.split(",")) if args.services else None
    with console.status("starting the local stack (redis, kafka, influxdb, ray)..."):
        info = control.up(settings, services=services)
    print_urls(info)
    console.print("stop it with [bold]aircast stack down[/bold]")
    return 0


def cmd_stack_down(settings: Settings, args: argparse.Namespace) -> int:
    was_up = control.down(settings)
    console.print("stack stopped" if was_up else "no stack was up; nothing left running")
    return 0


def cmd_stack_status(settings: Settings, args: argparse.Namespace) -> int:
    report = control.status(settings)
    table = Table(title="aircast local stack")
    for col in ("service", "status", "healthy", "pid", "restarts", "urls"):
        table.add_column(col)
    for name, info in report.items():
        table.add_row(
            name,
            str(info["status"]),
            "yes" if info["healthy"] else "[red]NO[/red]",
            str(info["pid"]),
            str(info["restarts"]),
            " ".join(info["urls"].values()),
        )
    console.print(table)
    return 0 if all(i["healthy"] for i in report.values()) else 1


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    """Bring the stack up, start the pipeline, print the URLs and where each stage
    stands until Ctrl-C; then stop the pipeline and the stack (if started here)."""
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    info = control.running(settings.stack.state_dir.resolve())
    started_here = info is None
    if info is None:
        with console.status("starting the local stack (first run: a minute)..."):
            info = control.up(settings)
    settings = load_settings(args.config)
    print_urls(info)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    running = None
    try:
        if "ray" in settings.stack.services and not args.no_pipeline:
            running = _start_pipeline(settings)
        console.print("pipeline running; press Ctrl-C to stop")
        last = counted = -math.inf
        while not stop:
            if time.monotonic() - last >= args.status_every:
                # InfluxDB's counts scan every series (aircast.pipeline): now and then.
                count = args.count_every > 0 and time.monotonic() - counted >= args.count_every
                _print_status(settings, running, influx=count)
                last = time.monotonic()
                if count:
                    counted = last
            if args.once:
                break
            time.sleep(0.5)
    finally:
        if running is not None:
            from actors import pipeline

            with console.status("stopping the pipeline..."):
                try:
                    pipeline.stop(running)
                except Exception as exc:  # the stack below is stopped all the same
                    err.print(f"[red]stopping the pipeline failed: {exc}[/red]")
        if started_here and not args.keep:
            with console.status("stopping the local stack..."):
                control.down(settings)
            console.print("stack stopped; nothing left running")
    return 0


def _start_pipeline(settings: Settings) -> Any:
    import os

    from aircast.localhost import ray_environment

    for name, value in ray_environment().items():
        os.environ.setdefault(name, value)
    from actors import pipeline
    from aircast.snapshots import choose_source

    source = choose_source(settings)  # probes the live API once; fails fast offline
    if source == "simulator":
        err.print("[yellow]live API unreachable: ingesting the built-in SIMULATOR[/yellow]")
    running = pipeline.prepare(settings, source)
    # Serve before the jobs: its proxy must be ready within seconds of its creation,
    # and the jobs' actors would take the raylet's worker-start slots first.
    with console.status("deploying the HTTP API on Ray Serve..."):
        settings = pipeline.deploy_serve(settings, running)
    if running.serve_retry_at is not None:
        err.print(
            "[yellow]the HTTP API did not deploy; retrying with backoff (see the status "
            "line's serve=...) while the rest runs[/yellow]"
        )
    pipeline.submit_jobs(running)
    table = Table(title="aircast pipeline")
    table.add_column("what")
    table.add_column("where")
    table.add_row("live map", f"{running.serve_url}/ui/")
    table.add_row("HTTP API (OpenAPI docs)", f"{running.serve_url}/docs")
    table.add_row("Ray dashboard: jobs", f"{settings.ray.dashboard_url}/#/jobs")
    table.add_row("Ray dashboard: Serve", f"{settings.ray.dashboard_url}/#/serve")
    for name, job_id in running.jobs.items():
        table.add_row(
            f"ray job: {name}", f"ray job logs {job_id} --address {settings.ray.dashboard_url}"
        )
    table.add_row("source", source)
    console.print(table)
    return running


def _print_status(settings: Settings, running: Any, *, influx: bool) -> None:
    from aircast import pipeline

    try:
        line = pipeline.status(settings, influx=influx).line()
    except Exception as exc:
        line = f"status unavailable: {exc}"
    jobs = ""
    if running is not None:
        try:
            for what in running.revive():
                err.print(f"[yellow]{what}[/yellow]")
            jobs = " " + " ".join(f"{k}={v}" for k, v in running.statuses().items())
        except Exception as exc:  # the dashboard restarting: the next line tries again
            jobs = f" jobs unavailable: {exc}"
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {line}{jobs}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aircast", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=None, help="YAML settings file")
    sub = parser.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="the local single-machine stack")
    stack_sub = stack.add_subparsers(dest="stack_command", required=True)
    p = stack_sub.add_parser("up", help="start redis, kafka (tansu), influxdb and ray")
    p.add_argument("--services", default=None, help="comma-separated subset")
    p.set_defaults(func=cmd_stack_up)
    stack_sub.add_parser("down", help="stop everything").set_defaults(func=cmd_stack_down)
    stack_sub.add_parser("status", help="health and URLs").set_defaults(func=cmd_stack_status)

    p = sub.add_parser("run", help="stack up + pipeline until Ctrl-C")
    p.add_argument("--once", action="store_true", help="start, report, stop (smoke test)")
    p.add_argument("--keep", action="store_true", help="leave the stack up on exit")
    p.add_argument("--no-pipeline", action="store_true", help="only the stack")
    p.add_argument("--status-every", type=float, default=15.0, help="seconds between lines")
    p.add_argument(
        "--count-every",
        type=float,
        default=300.0,
        help="seconds between the lines that also count InfluxDB's last hour of points "
        "(each count scans every series; 0: never)",
    )
    p.set_defaults(func=cmd_run)

    from aircast_cli import commands

    for module in sorted(m.name for m in pkgutil.iter_modules(commands.__path__)):
        importlib.import_module(f"aircast_cli.commands.{module}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Before any command imports Ray: loopback only, no usage stats, one auth mode
    # (without these, ray.init on 127.0.0.1 can try another interface and hang).
    import os

    from aircast.localhost import ray_environment

    for name, value in ray_environment().items():
        os.environ.setdefault(name, value)
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        _setup_logging(settings.log_level)
        func: Callable[[Settings, argparse.Namespace], int] = args.func
        return func(settings, args)
    except AircastError as exc:
        err.print(f"[red]error:[/red] {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
