"""`aircast backfill --archive DIR|URL --from D --to D`: archive days into InfluxDB."""

from __future__ import annotations

import argparse
import json
from datetime import date
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from aircast.archive import days
from aircast.backfill import Backfill
from aircast.influx import InfluxV1
from aircast.records import Rejection
from aircast.settings import Settings

console = Console()


def cmd_backfill(settings: Settings, args: argparse.Namespace) -> int:
    start, end = args.start, args.end
    if end < start:
        console.print(f"[red]--to {end} is before --from {start}[/red]")
        return 2
    geocoder = None
    if not args.no_geocode:
        from aircast.geocode import make_geocoder

        geocoder = make_geocoder(settings.ingest)
    letters = producer = None
    if not args.no_dead_letters:
        from aircast.deadletters import DeadLetters
        from aircast.kafka import ensure_topics
        from aircast.kafka import producer as make_producer

        ensure_topics(settings.kafka, [settings.kafka.dead_letter_topic])
        producer = make_producer(settings.kafka)
        letters = DeadLetters(producer, settings.kafka.dead_letter_topic, "backfill")

    def on_reject(rejection: Rejection, record: Any) -> None:
        if letters is not None:
            letters.add(
                rejection.reason,
                rejection.detail,
                record,
                values=rejection.values,
                source=str(args.archive),
            )

    with InfluxV1(settings.influx) as influx:
        influx.ensure_databases()
        backfill = Backfill(influx, settings.influx, geocoder=geocoder, on_reject=on_reject)
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("backfill", total=len(days(start, end)))

            def advance(day: date) -> None:
                r = backfill.report
                progress.update(
                    task,
                    advance=1,
                    description=f"{day} readings={r.readings_written} "
                    f"aggregates={r.aggregates_written}",
                )

            report = backfill.run(args.archive, start, end, progress=advance)
    if producer is not None:
        producer.flush()
        producer.close()
    table = Table(title=f"backfill {start} .. {end} from {args.archive}")
    table.add_column("count")
    table.add_column("value", justify="right")
    for name in ("days", "records", "values", "readings_written", "aggregates_written"):
        table.add_row(name, str(getattr(report, name)))
    for reason, n in sorted(report.rejected.items()):
        table.add_row(f"rejected: {reason}", str(n))
    console.print(table)
    print(json.dumps(report.to_dict(), separators=(",", ":")))
    return 0 if report.balanced() else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("backfill", help="load archive days into InfluxDB (idempotent)")
    p.add_argument("--archive", required=True, help="archive folder or http(s) base URL")
    p.add_argument("--from", dest="start", type=date.fromisoformat, required=True)
    p.add_argument("--to", dest="end", type=date.fromisoformat, required=True)
    p.add_argument("--no-geocode", action="store_true", help="no city/country tags")
    p.add_argument(
        "--no-dead-letters", action="store_true", help="count rejections, send none to Kafka"
    )
    p.set_defaults(func=cmd_backfill)
