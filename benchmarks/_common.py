"""Shared scaffolding for benchmarks: a private stack, progress, the JSON last line."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from aircast.settings import Settings, StackSettings
from aircast_cli.stack import control


@contextmanager
def private_stack(*services: str) -> Iterator[Settings]:
    """A stack of its own (free ports, temporary folder), stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix="aircast-bench-") as tmp:
        base = Settings(stack=StackSettings(state_dir=Path(tmp), services=services))
        control.up(base)
        try:
            yield control.load_stack_settings(base, Path(tmp).resolve())
        finally:
            control.down(base, purge=True)


def emit(result: dict[str, Any]) -> None:
    """The benchmark's last line: one JSON object."""
    print(json.dumps(result, sort_keys=True), flush=True)
