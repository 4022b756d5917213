"""`aircast audit --since T`: prove conservation of every reading for a span of time.

Prints per-stage counts and every difference (up to a screenful), and as its last line
one JSON object; exits 1 when a reading is lost, written twice, or a rejection count
differs from what the domain rejects.
"""

from __future__ import annotations

import argparse
import math
import time
from datetime import datetime
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from aircast import tuning
from aircast.audit import run_audit
from aircast.errors import ConfigError
from aircast.influx import duration_seconds
from aircast.settings import Settings


def parse_when(text: str, now: float | None = None) -> float:
    """``T`` as epoch seconds, ISO 8601 (UTC unless it says), or a span ago (``15m``)."""
    now = time.time() if now is None else now
    text = text.strip()
    try:
        epoch = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(epoch):
            return epoch
    try:
        ago = duration_seconds(text)
    except ConfigError:
        ago = None
    if ago is not None:
        return now - ago
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (epoch seconds, ISO 8601, or a span ago like 15m)"
        ) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.now().astimezone().tzinfo)
    return parsed.timestamp()


def cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    with console.status("auditing: raw topic, dead letters, readings topic, InfluxDB"):
        audit = run_audit(settings, args.since, args.until)
    summary = audit.summary()
    table = Table(title=f"conservation since {datetime.fromtimestamp(audit.since).isoformat()}")
    table.add_column("stage")
    table.add_column("count", justify="right")
    rows: list[tuple[str, Any]] = [
        ("raw topic: records", audit.raw_records),
        ("raw topic: values", audit.values_in),
        ("  → distinct valid readings", summary["readings_expected"]),
        ("  → values the domain rejects", summary["values_rejected_expected"]),
        ("flink: readings-topic messages", audit.readings_topic_messages),
        ("flink: distinct readings out", audit.readings_topic_distinct),
        ("collect: readings in InfluxDB", audit.stored),
        ("collect: readings dead-lettered", summary["collect_dead_lettered"]),
        ("identical dead letters (replays, re-sightings): counted once", audit.letter_replays),
        ("lost", len(audit.lost)),
        ("written twice", len(audit.doubled)),
    ]
    for stage, counts in sorted(audit.lettered.items()):
        for reason, n in sorted(counts.items()):
            rows.append((f"{stage} dead letters: {reason} (values)", n))
    for reason, n in sorted(audit.ingest_rejected.items()):
        rows.append((f"ingest (before the raw topic): {reason}", n))
    for label, value in rows:
        table.add_row(label, f"{value:,}")
    console.print(table)
    for rid in audit.lost[: tuning.AUDIT_SHOWN]:
        console.print(f"[red]lost[/] {rid[0]} sensor {rid[1]} at {rid[2]}")
    for rid, n in list(audit.doubled.items())[: tuning.AUDIT_SHOWN]:
        console.print(f"[red]written twice[/] {rid[0]} sensor {rid[1]} at {rid[2]} ({n} series)")
    for reason, (want, got) in audit.rejection_differences.items():
        console.print(f"[red]rejections differ[/] {reason}: domain {want}, dead letters {got}")
    console.print("[green]conserved[/]" if audit.ok else "[red]NOT conserved[/]")
    print(orjson.dumps(summary).decode())
    return 0 if audit.ok else 1


def register(sub: Any) -> None:
    p = sub.add_parser(
        "audit", help="conservation: every record in InfluxDB or dead-lettered with a reason"
    )
    p.add_argument(
        "--since",
        type=parse_when,
        required=True,
        help="start of the span: epoch seconds, ISO 8601, or a span ago (15m, 2h)",
    )
    p.add_argument("--until", type=parse_when, default=None, help="end of the span (now)")
    p.set_defaults(func=cmd_audit)
