"""`aircast collect`: readings and aggregates from Kafka into InfluxDB on Ray actors; the
same as ``ray job submit -- python -m actors.collect`` (one set of options)."""

from __future__ import annotations

import argparse
from typing import Any

from aircast import options
from aircast.settings import Settings


def cmd_collect(settings: Settings, args: argparse.Namespace) -> int:
    from actors import collect  # Ray is imported here, not at CLI start

    return collect.run(options.collect_settings(settings, args), until_idle_s=args.until_idle)


def register(sub: Any) -> None:
    p = sub.add_parser("collect", help="Kafka readings/aggregates → InfluxDB on Ray actors")
    options.add_collect(p)
    p.set_defaults(func=cmd_collect)
