"""Archive days on this machine: a local copy when there is one, else fetched once from
the public sensor.community archive into a cache, each file checked against a manifest.

A manifest is ``sha256sum`` output over the archive root (``<digest>  YYYY-MM-DD/<file>``),
so ``sha256sum -c`` verifies a copy by hand too. A file is kept only when its digest
matches: a changed or truncated download is refused, never read as data. Without a
local copy and without network, :func:`ensure_archive` raises one
:class:`ArchiveUnavailable` naming the days missing and how to provide them.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from aircast import tuning
from aircast.archive import ArchiveError, get
from aircast.errors import AircastError

log = logging.getLogger(__name__)

PUBLIC_ARCHIVE = "https://archive.sensor.community"


class ArchiveUnavailable(AircastError):
    """The archive files asked for are neither here nor fetchable."""


@dataclass(frozen=True)
class Entry:
    sha256: str
    path: str  # relative to the archive root: YYYY-MM-DD/<file>

    @property
    def day(self) -> str:
        return self.path.split("/", 1)[0]


def read_manifest(path: Path) -> list[Entry]:
    entries: list[Entry] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name or name.startswith("/") or ".." in name.split("/"):
            raise ArchiveUnavailable(f"{path}:{n}: not a sha256sum line: {line!r}")
        entries.append(Entry(digest.lower(), name))
    return entries


def write_manifest(root: Path, paths: Iterable[str], out: Path) -> None:
    """The manifest of ``paths`` (relative to ``root``) as they are now."""
    lines = [f"{sha256(root / p)}  {p}" for p in sorted(paths)]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(tuning.HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def mismatched(root: Path, entries: Iterable[Entry]) -> list[Entry]:
    """Entries absent under ``root`` or whose file there has another digest."""
    return [
        e for e in entries if not (root / e.path).is_file() or sha256(root / e.path) != e.sha256
    ]


def _days(entries: Iterable[Entry]) -> str:
    days = sorted({e.day for e in entries})
    return ", ".join(days) if len(days) <= 8 else f"{', '.join(days[:8])}, ... ({len(days)} days)"


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One fetcher per cache at a time (parallel test workers share it)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_archive(
    entries: list[Entry],
    *,
    local: Path,
    cache: Path,
    base_url: str = PUBLIC_ARCHIVE,
    timeout_s: float = 30.0,
) -> Path:
    """The archive root holding every entry: ``local`` when it has them all, else
    ``cache``, after fetching whatever the cache lacks from ``base_url``.

    A local copy that exists but differs from the manifest is an error, not a reason to
    download: the data the tests were written against changed under them."""
    if local.is_dir():
        wrong = mismatched(local, entries)
        if not wrong:
            return local
        present = [e for e in wrong if (local / e.path).is_file()]
        if present:
            raise ArchiveUnavailable(
                f"{len(present)} archive files under {local} differ from the manifest "
                f"(e.g. {present[0].path}); restore them from the original archive"
            )
    with _locked(cache):
        todo = mismatched(cache, entries)
        if not todo:
            return cache
        log.info(
            "fetching %d archive files (%s) from %s into %s",
            len(todo),
            _days(todo),
            base_url,
            cache,
        )
        try:
            with httpx.Client(timeout=timeout_s, follow_redirects=True) as client:
                for entry in todo:
                    _fetch(client, base_url, entry, cache)
        except (ArchiveError, httpx.HTTPError) as exc:
            raise ArchiveUnavailable(
                f"the archive days {_days(todo)} ({len(todo)} files) are not in {local} "
                f"nor in the cache {cache}, and {base_url} cannot be reached "
                f"({type(exc).__name__}: {exc}). Put the sensor.community archive at "
                f"{local} (settings data.shared_dir, env AIRCAST_DATA__SHARED_DIR), or run "
                "once with network access to fill the cache."
            ) from exc
    return cache


def _fetch(client: httpx.Client, base_url: str, entry: Entry, cache: Path) -> None:
    url = f"{base_url.rstrip('/')}/{entry.path}"
    response = get(client, url)
    if response is None:
        raise ArchiveUnavailable(f"{url} is not in the archive (404)")
    got = hashlib.sha256(response.content).hexdigest()
    if got != entry.sha256:
        raise ArchiveUnavailable(
            f"{url}: sha256 {got} is not the manifest's {entry.sha256}; not kept"
        )
    target = cache / entry.path
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    partial.write_bytes(response.content)
    partial.replace(target)
