"""A user's clone without ``../shared``: the archive days the tests read come from the
public archive into a cache, each file checked against the manifest; offline, one clear
message. Served here by a real HTTP server on 127.0.0.1 laid out like
archive.sensor.community, from a copy of the real files."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from aircast.archive_cache import (
    ArchiveUnavailable,
    Entry,
    ensure_archive,
    read_manifest,
    sha256,
)
from aircast.localhost import free_port
from aircast.settings import Settings

from .conftest import ARCHIVE_MANIFEST, REPO

SHARED_ARCHIVE = Settings().data.archive_dir
DAY = "2019-03-09"


@contextmanager
def archive_server(root: Path) -> Iterator[tuple[str, list[str]]]:
    """A real HTTP server publishing ``root``; yields its URL and the paths asked for."""
    asked: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self) -> None:
            asked.append(self.path)
            super().do_GET()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def day_entries() -> list[Entry]:
    entries = [e for e in read_manifest(ARCHIVE_MANIFEST) if e.day == DAY]
    assert len(entries) >= 20, entries
    return entries


@pytest.fixture
def published(tmp_path: Path) -> Path:
    """A copy of one real archive day, as the public archive publishes it."""
    root = tmp_path / "public"
    shutil.copytree(SHARED_ARCHIVE / DAY, root / DAY)
    return root


def test_the_manifest_holds_every_day_the_tests_read_and_matches_the_real_files() -> None:
    entries = read_manifest(ARCHIVE_MANIFEST)
    days = {e.day for e in entries}
    assert days == {
        "2019-03-01",
        "2019-03-02",
        "2019-03-03",
        "2019-03-04",
        "2019-03-09",
        "2019-03-12",
        "2019-03-27",
        "2019-04-16",
    }
    for day in days:  # whole days: every file the archive has for that day
        assert {e.path for e in entries if e.day == day} == {
            f"{day}/{p.name}" for p in (SHARED_ARCHIVE / day).iterdir()
        }
    assert all(sha256(SHARED_ARCHIVE / e.path) == e.sha256 for e in entries)


def test_the_local_copy_is_used_as_it_is(tmp_path: Path) -> None:
    root = ensure_archive(
        day_entries(), local=SHARED_ARCHIVE, cache=tmp_path / "cache", base_url="http://0.0.0.0:9"
    )
    assert root == SHARED_ARCHIVE
    assert not (tmp_path / "cache").exists()


def test_a_missing_archive_is_fetched_once_and_checksummed(tmp_path: Path, published: Path) -> None:
    entries = day_entries()
    cache = tmp_path / "cache"
    with archive_server(published) as (url, asked):
        root = ensure_archive(entries, local=tmp_path / "absent", cache=cache, base_url=url)
        assert root == cache
        assert sorted(asked) == sorted(f"/{e.path}" for e in entries)
        assert all(sha256(cache / e.path) == e.sha256 for e in entries)
        assert not list(cache.rglob("*.part"))
        # A second session finds the cache complete: nothing is asked again.
        assert ensure_archive(entries, local=tmp_path / "absent", cache=cache, base_url=url)
        assert len(asked) == len(entries)


def test_a_changed_file_is_refused_and_not_kept(tmp_path: Path, published: Path) -> None:
    entries = day_entries()
    victim = published / entries[3].path
    victim.write_bytes(victim.read_bytes() + b"15092;SDS011;7647;56.9;-2.2;x;1;;;1;;\n")
    cache = tmp_path / "cache"
    with archive_server(published) as (url, _), pytest.raises(ArchiveUnavailable) as caught:
        ensure_archive(entries, local=tmp_path / "absent", cache=cache, base_url=url)
    assert entries[3].path in str(caught.value) and "not kept" in str(caught.value)
    assert not (cache / entries[3].path).exists()
    assert (cache / entries[2].path).is_file()  # the good ones before it stay


def test_a_local_copy_that_differs_from_the_manifest_is_an_error(tmp_path: Path) -> None:
    local = tmp_path / "archive"
    shutil.copytree(SHARED_ARCHIVE / DAY, local / DAY)
    entry = day_entries()[0]
    (local / entry.path).write_text("sensor_id;sensor_type\n", encoding="utf-8")
    with pytest.raises(ArchiveUnavailable, match="differ from the manifest"):
        ensure_archive(
            day_entries(), local=local, cache=tmp_path / "cache", base_url="http://0.0.0.0:9"
        )


def test_offline_the_session_stops_with_one_message_naming_what_is_missing(
    tmp_path: Path,
) -> None:
    """pytest itself, in a clone whose ../shared is absent and with nothing listening
    where the archive should be: one usage error, no test run."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "AIRCAST_DATA__SHARED_DIR": str(tmp_path / "no-shared"),
        "AIRCAST_TEST_ARCHIVE_URL": f"http://127.0.0.1:{free_port()}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_aqi.py"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 4, out[-3000:]  # pytest's usage error
    assert "2019-03-01, 2019-03-02" in out, out[-3000:]
    assert str(tmp_path / "no-shared") in out and "AIRCAST_DATA__SHARED_DIR" in out, out[-3000:]
    assert "cannot be reached" in out, out[-3000:]
    assert " passed" not in out
