"""`aircast ingest` and `aircast simulate`."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from aircast.settings import Settings

log = logging.getLogger(__name__)


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    from actors import ingest  # Ray is imported here, not at CLI start

    updates: dict[str, Any] = {}
    if args.source:
        updates["source"] = args.source
    if args.scrapers:
        updates["scrapers"] = args.scrapers
    if updates:
        settings = settings.model_copy(
            update={"ingest": settings.ingest.model_copy(update=updates)}
        )
    return ingest.run(settings, once=args.once)


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    from aircast.simulator import Network, SimulatorServer, current_window_end

    network = Network(
        args.sensors or settings.ingest.simulator_sensors, settings.ingest.simulator_seed
    )
    refresh = settings.ingest.simulator_refresh_s
    server = SimulatorServer(
        network, port=args.port, clock=lambda: current_window_end(refresh_s=refresh)
    )
    print(f"simulator: {len(network.sensors)} sensors at {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("ingest", help="scrape snapshots on Ray actors into the raw topic")
    p.add_argument("--source", choices=["auto", "live", "simulator", "archive"])
    p.add_argument("--scrapers", type=int, default=None, help="number of scraper actors")
    p.add_argument("--once", action="store_true", help="one snapshot, then exit")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("simulate", help="serve a synthetic network at the live API's path")
    p.add_argument("--sensors", type=int, default=None)
    p.add_argument("--port", type=int, default=8599)
    p.set_defaults(func=cmd_simulate)
