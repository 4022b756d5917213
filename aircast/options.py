"""Each stage's command-line options, defined once: ``aircast <stage>`` and
``python -m actors.<stage>`` / ``python -m training.job`` (what ``ray job submit`` and
the RayJobs run) build their parsers from these, and apply them to the settings here.

A flag overrides one setting for this run; everything else comes from the settings'
layers (defaults, the YAML file, ``AIRCAST_*`` variables)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from aircast.settings import Settings

SOURCES = ("auto", "live", "simulator", "archive")


def add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="YAML settings file")


def add_ingest(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", choices=SOURCES, help="where snapshots come from")
    parser.add_argument("--scrapers", type=int, default=None, help="number of scraper actors")
    parser.add_argument("--once", action="store_true", help="one snapshot, then exit")
    parser.add_argument(
        "--history-hours",
        type=int,
        default=None,
        help="simulator only: hours of its past seeded into InfluxDB first (0: none)",
    )


def ingest_settings(settings: Settings, args: argparse.Namespace) -> Settings:
    updates: dict[str, Any] = {}
    if args.source:
        updates["source"] = args.source
    if args.scrapers:
        updates["scrapers"] = args.scrapers
    if args.history_hours is not None:
        updates["simulator_history_h"] = args.history_hours
    if not updates:
        return settings
    return settings.model_copy(update={"ingest": settings.ingest.model_copy(update=updates)})


def add_collect(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--actors", type=int, default=None, help="number of collector actors")
    parser.add_argument(
        "--until-idle",
        type=float,
        default=None,
        help="exit after this many seconds without messages (one-shot run)",
    )


def collect_settings(settings: Settings, args: argparse.Namespace) -> Settings:
    if not args.actors:
        return settings
    return settings.model_copy(
        update={"collect": settings.collect.model_copy(update={"actors": args.actors})}
    )


def add_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--every", type=float, nargs="?", const=-1.0, default=None, help="repeat every SECONDS"
    )
    parser.add_argument("--workers", type=int, default=None, help="Ray Train workers")
    parser.add_argument("--end", type=int, default=None, help="train up to this epoch (s)")
