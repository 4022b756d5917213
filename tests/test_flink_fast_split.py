"""The Flink job's JVM fast lane (flink/java, ``aircast.flink.FastSplit``) against the
domain's split (:func:`flink.transforms.split_message`, which the Python lane runs).

Its two claims, checked on real records (the feed sample, a day of the archive), the
simulator's (with its faults) and mutations of them:

* a message it takes gives exactly the rows the domain gives (event ms, key, the
  Reading's JSON byte for byte, value), and the domain rejects none of its values;
* everything else takes the slow lane (the Python split), which decides.

The function runs in a JVM of its own here (the jar's ``main``: messages in, rows or
``slow`` out), the same class the job runs.
"""

from __future__ import annotations

import json
import random
import subprocess
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from aircast import records as R
from aircast.archive import iter_day_records
from aircast.settings import Settings
from aircast.simulator import Faults, Network
from flink import transforms as T
from flink.config import lane_jar

from .conftest import REPO

# The Flink jars PyFlink ships (the fast lane is compiled against them at setup).
(FLINK_LIB,) = (REPO / ".venv-flink" / "lib").glob("python3*/site-packages/pyflink/lib")
PLACE = {
    "city": "Aberdeen",
    "region": "Scotland",
    "country": "United Kingdom",
    "country_code": "GB",
}


def fast_lane(messages: list[str], tmp_path: Path) -> list[list[Any] | None]:
    """The fast lane's answer per message: its rows, or None (the slow lane)."""
    jar = lane_jar(Settings())
    assert jar.is_file(), f"{jar} missing: `make setup` builds it"
    table = tmp_path / "measures.txt"
    table.write_text(T.measure_table())
    done = subprocess.run(
        ["java", "-cp", f"{jar}:{FLINK_LIB}/*", "aircast.flink.FastSplit", str(table)],
        input="".join(json.dumps(m) + "\n" for m in messages),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert len(lines) == len(messages), done.stderr[-2000:]
    return [None if line == "slow" else json.loads(line) for line in lines]


def domain(message: str) -> list[list[Any]] | None:
    """The domain's rows for a message, or None if it rejects any of its values."""
    rows = []
    for outcome in T.split_message(message, 0):
        if isinstance(outcome, R.DeadLetter):
            return None
        rows.append(list(T.job_row(outcome)))
    return rows


def check(messages: list[str], tmp_path: Path) -> int:
    """Assert both claims; how many messages took the fast lane."""
    taken = 0
    for message, rows in zip(messages, fast_lane(messages, tmp_path), strict=True):
        if rows is None:
            continue
        taken += 1
        want = domain(message)
        assert want is not None, f"fast lane took a message the domain rejects: {message}"
        assert rows == want, message
        # The JSON is the Reading's own: it reads back as the same Reading.
        for _, key, text, value in rows:
            reading = R.Reading.from_json(text)
            assert (reading.key, reading.value) == (key, value)
    return taken


def enriched(record: dict[str, Any]) -> str:
    return json.dumps({**record, "place": PLACE}, ensure_ascii=False, separators=(",", ":"))


@pytest.mark.slow
def test_real_records_take_the_fast_lane_with_the_domains_rows(tmp_path: Path) -> None:
    settings = Settings()
    sample = json.loads(settings.data.feed_sample.read_text())
    day = list(iter_day_records(settings.data.archive_dir, date(2019, 3, 12)))
    messages = [enriched(r) for r in sample + day]
    taken = check(messages, tmp_path)
    clean = sum(domain(m) is not None for m in messages)
    # Nearly every clean real record is taken (the rest: forms the lane leaves to Python,
    # e.g. a value sent as a JSON number, not a string).
    assert taken >= 0.95 * clean, (taken, clean, len(messages))


@pytest.mark.slow
def test_simulated_records_with_faults(tmp_path: Path) -> None:
    network = Network(3_000, seed=5, faults=Faults(0.05, 0.05, 0.05, 0.0, 0.05, 0.05))
    messages = [enriched(r) for r in network.snapshot(1_800_000_000)]
    taken = check(messages, tmp_path)
    rejected = sum(domain(m) is None for m in messages)
    assert rejected > 100  # the faults are there, and were left to Python
    assert taken == len(messages) - rejected  # and every clean record was taken


TRICKY: list[Any] = [
    None, True, False, 0, 1, -1, 7.0, 2**63, 2**64 + 1, 1e300, "", " ", "0", "1", "-0",
    "007", "1_000", " 12.5", "12.5 ", "1e3", "1E-3", ".5", "5.", "+5", "-5", "NaN", "nan",
    "inf", "-Infinity", "٣", "12,5", "0.000001", "0.00001", "0.0000100", "999.9",
    "999.90000000000001", "1000", "123456789012345", "1234567890123456", "-50", "60.0001",
    "2019-04-16 14:22:52", "2019-04-16T14:22:52", "2019-04-16 24:00:00", "0000-01-01 00:00:00",
    "2019-02-29 00:00:00", "2020-02-29 23:59:59", "2019-04-16 14:22:52Z", "2019-4-16 14:22:52",
    "P1", "p1", "temperature", "radon", "DE", "de", "ß", "İ", "Zürich", 'a"b', [], {}, [1],
    {"name": "SDS011"},
]  # fmt: skip


def _leaves(node: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) of a JSON value, depth first."""
    out: list[tuple[Any, Any]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for k, v in items:
        out.append((node, k))
        if isinstance(v, dict | list):
            out += _leaves(v)
    return out


def mutate(record: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """The record with one to three leaves replaced by tricky values, or removed."""
    out = json.loads(json.dumps(record))
    for _ in range(rng.randint(1, 3)):
        paths = _leaves(out)
        parent, key = rng.choice(paths)
        if isinstance(parent, dict) and rng.random() < 0.15:
            del parent[key]
        else:
            parent[key] = rng.choice(TRICKY)
    return out


@pytest.mark.slow
def test_mutated_records_are_taken_only_when_the_domain_agrees(tmp_path: Path) -> None:
    settings = Settings()
    rng = random.Random(20261205)
    sample = json.loads(settings.data.feed_sample.read_text())
    base = [{**r, "place": PLACE} for r in sample]
    mutants = [mutate(rng.choice(base), rng) for _ in range(6_000)]
    messages = [json.dumps(m, ensure_ascii=False, separators=(",", ":")) for m in mutants]
    # Texts no dict can give: repeated keys, escapes, a second value, an overflow, a BOM.
    text = messages[0]
    messages += [
        text[:-1] + ',"id":1}',
        text.replace('"sensor_id"', '"sensor\\u005fid"').replace("Aberdeen", "Aber\\u0064een"),
        text + " {}",
        text[:-1] + ',"sampling_rate":1e400}',
        "\ufeff" + text,
        " " + text,
        "{not json",
        "[]",
        "",
    ]
    taken = check(messages, tmp_path)
    # Mutations often leave a record valid (a tricky value in a field no check reads):
    # the lane must still take most of those.
    assert taken > 1_000
