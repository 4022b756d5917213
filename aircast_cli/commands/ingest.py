"""`aircast ingest` (the same as ``ray job submit -- python -m actors.ingest``, one set
of options) and `aircast simulate`."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from aircast import options
from aircast.settings import Settings

log = logging.getLogger(__name__)


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    from actors import ingest  # Ray is imported here, not at CLI start

    return ingest.run(options.ingest_settings(settings, args), once=args.once)


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
    options.add_ingest(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("simulate", help="serve a synthetic network at the live API's path")
    p.add_argument("--sensors", type=int, default=None)
    p.add_argument("--port", type=int, default=8599)
    p.set_defaults(func=cmd_simulate)
