"""Runs luftdatenpumpe 0.22 (the closest existing tool) in its own virtualenv for
bench-e2e: ``readings`` from a sensor.community-format URL into InfluxDB 1.x, geocoding
off. Its source URL is the class attribute ``LuftdatenPumpe.uri``; it is pointed at the
local server here, at run time, without editing the tool's files.

Usage: python peer_luftdatenpumpe.py URL INFLUX_DSN
Prints one JSON line: {"seconds": S} from the start of its run (fetch) to its last write.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> int:
    url, dsn = sys.argv[1], sys.argv[2]
    from luftdatenpumpe import commands
    from luftdatenpumpe.source.luftdaten_info import LuftdatenPumpe

    LuftdatenPumpe.uri = url
    sys.argv = ["luftdatenpumpe", "readings", "--network=ldi", f"--target={dsn}"]
    started = time.perf_counter()
    code = 0
    try:
        commands.run()
    except SystemExit as exc:  # docopt-style CLIs exit on their own
        code = int(exc.code or 0)
    print(json.dumps({"seconds": time.perf_counter() - started, "exit": code}), flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
