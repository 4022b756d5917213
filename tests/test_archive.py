"""The archive reader: real days give exactly one record per row and one value per
non-empty measure cell (counted here independently with the csv module), dirty rows
are rejected with a reason rather than dropped, and an http base URL laid out like the
public archive gives the same records as the folder."""

from __future__ import annotations

import csv
import functools
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import date
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from aircast.archive import days, iter_day_records, iter_records, snapshots
from aircast.records import MISSING_FIELD, UNKNOWN_TYPE, Reading, Rejection, split_record
from aircast.settings import Settings

ARCHIVE = Settings().data.archive_dir
if not ARCHIVE.is_absolute():
    ARCHIVE = (Path(__file__).resolve().parent.parent / ARCHIVE).resolve()
MEASURE_CELLS = {"P1", "P2", "temperature", "humidity", "pressure", "pressure_sealevel"}


def _count_csv(day: date) -> tuple[int, int]:
    """Rows and non-empty measure cells of a day, read with the csv module."""
    rows = values = 0
    for path in sorted((ARCHIVE / day.isoformat()).glob("*.csv")):
        with path.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh, delimiter=";"):
                rows += 1
                values += sum(1 for k, v in row.items() if k in MEASURE_CELLS and v != "")
    return rows, values


def _outcomes(records: list[dict[str, Any]]) -> Counter[str]:
    c: Counter[str] = Counter()
    for record in records:
        for o in split_record(record):
            c["reading" if isinstance(o, Reading) else o.reason] += (
                1 if isinstance(o, Reading) else o.values
            )
    return c


def test_days_inclusive() -> None:
    assert days(date(2019, 3, 30), date(2019, 4, 2)) == [
        date(2019, 3, 30),
        date(2019, 3, 31),
        date(2019, 4, 1),
        date(2019, 4, 2),
    ]
    assert days(date(2019, 4, 2), date(2019, 4, 1)) == []


@pytest.mark.parametrize("day", [date(2019, 3, 1), date(2019, 3, 9), date(2019, 3, 27)])
def test_real_day_counts(day: date) -> None:
    rows, values = _count_csv(day)
    records = list(iter_day_records(ARCHIVE, day))
    assert len(records) == rows
    assert sum(len(r["sensordatavalues"]) for r in records) == values
    stamps = [r["timestamp"] for r in records]
    assert stamps == sorted(stamps)
    assert all(s.startswith(day.isoformat() + " ") for s in stamps)
    names = {v["value_type"] for r in records for v in r["sensordatavalues"]}
    assert names <= {"P1", "P2", "temperature", "humidity", "pressure", "pressure_at_sealevel"}
    # Every value is accounted for: a reading or a rejection with a reason.
    outcomes = _outcomes(records)
    empty_rows = sum(1 for r in records if not r["sensordatavalues"])
    assert sum(outcomes.values()) == values + empty_rows
    assert outcomes[MISSING_FIELD] == empty_rows


def test_all_empty_row_is_rejected_not_dropped() -> None:
    # 2019-03-09 holds a SDS011 row whose measure cells are all empty.
    records = [
        r
        for r in iter_day_records(ARCHIVE, date(2019, 3, 9))
        if r["sensor"]["id"] == 22885 and r["timestamp"] == "2019-03-09 23:40:58"
    ]
    assert len(records) == 1
    assert records[0]["sensordatavalues"] == []
    [outcome] = split_record(records[0])
    assert isinstance(outcome, Rejection) and outcome.reason == MISSING_FIELD


def test_dirty_rows(tmp_path: Path) -> None:
    day = tmp_path / "2019-03-01"
    day.mkdir()
    (day / "2019-03-01_sds011_sensor_1.csv").write_text(
        "sensor_id;sensor_type;location;lat;lon;timestamp;P1;durP1;ratioP1;P2;durP2;ratioP2\n"
        "1;SDS011;10;57.1;-2.1;2019-03-01T00:00:10;12.5;;;3.0;;\n"  # fine
        "1;SDS011;10;57.1;-2.1;2019-03-01T00:02:40;2000.0;1;2;abc;;\n"  # range, text
        "1;SDS011;10;57.1;-2.1;2019-03-01T00:05:10;1.0;;\n"  # too few cells
        "1;SDS011;10;0;0;2019-03-01T00:07:40;1.0;;;1.0;;\n"  # no location
        "1;SDS011;10;57.1;-2.1;yesterday;1.0;;;1.0;;\n"  # bad timestamp
        "\n",
        encoding="utf-8",
    )
    (day / "2019-03-01_dnms_sensor_2.csv").write_text(
        "sensor_id;sensor_type;location;lat;lon;timestamp;noise_LAeq;noise_Leq\n"
        "2;DNMS;20;57.2;-2.2;2019-03-01T00:01:00;55.1;54.0\n",
        encoding="utf-8",
    )
    (day / "notes.txt").write_text("not an archive file\n", encoding="utf-8")
    records = list(iter_day_records(tmp_path, date(2019, 3, 1)))
    assert len(records) == 6  # every data line, none dropped
    raw = [r for r in records if "_raw" in r]
    assert len(raw) == 1 and raw[0]["_source"] == "2019-03-01_sds011_sensor_1.csv:4"
    assert raw[0]["_raw"].endswith(";1.0;;")
    dnms = next(r for r in records if r.get("sensor", {}).get("id") == 2)
    assert dnms["sensordatavalues"] == [
        {"value": "55.1", "value_type": "noise_LAeq"},
        {"value": "54.0", "value_type": "noise_Leq"},
    ]
    assert _outcomes(records) == Counter(
        {
            "reading": 3,  # 12.5, 3.0, 55.1
            "out_of_range": 1,
            "not_numeric": 1,
            MISSING_FIELD: 1,  # the unreadable line
            "zero_coordinates": 2,
            "bad_timestamp": 2,
            UNKNOWN_TYPE: 1,  # noise_Leq is no measure of ours
        }
    )
    assert list(iter_day_records(tmp_path, date(2019, 3, 2))) == []  # a missing day


def test_snapshots_are_consecutive_windows() -> None:
    records = list(iter_records(ARCHIVE, date(2019, 3, 1), date(2019, 3, 2)))
    windows = list(snapshots(records, 300))
    starts = [start for start, _ in windows]
    assert starts == list(range(starts[0], starts[-1] + 300, 300))
    assert starts[0] == 1551398400  # 2019-03-01 00:00 UTC
    assert sum(len(batch) for _, batch in windows) == len(records)
    assert [r for _, batch in windows for r in batch] == records


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture()
def archive_url() -> Iterator[str]:
    handler = functools.partial(_Quiet, directory=str(ARCHIVE))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_http_base_url_matches_folder(archive_url: str) -> None:
    day = date(2019, 4, 16)
    assert list(iter_day_records(archive_url, day)) == list(iter_day_records(ARCHIVE, day))
    assert list(iter_day_records(archive_url, date(2020, 1, 1))) == []  # 404: missing day
