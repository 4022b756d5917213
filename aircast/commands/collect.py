"""`aircast collect`: readings and aggregates from Kafka into InfluxDB on Ray actors."""

from __future__ import annotations

import argparse
from typing import Any

from aircast.settings import Settings


def cmd_collect(settings: Settings, args: argparse.Namespace) -> int:
    from actors import collect  # Ray is imported here, not at CLI start

    if args.actors:
        settings = settings.model_copy(
            update={"collect": settings.collect.model_copy(update={"actors": args.actors})}
        )
    return collect.run(settings, until_idle_s=args.until_idle)


def register(sub: Any) -> None:
    p = sub.add_parser("collect", help="Kafka readings/aggregates → InfluxDB on Ray actors")
    p.add_argument("--actors", type=int, default=None, help="number of collector actors")
    p.add_argument(
        "--until-idle",
        type=float,
        default=None,
        help="exit after this many seconds without messages",
    )
    p.set_defaults(func=cmd_collect)
