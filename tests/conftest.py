"""Session fixtures: one real local stack (redis-server, tansu, influxd, Ray head) for
the whole test session, in a temporary state folder, on free ports; fresh names
(topics, databases, Redis key prefixes) per test."""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before anything imports Ray: stats off, loopback only, one auth mode.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from aircast.archive_cache import PUBLIC_ARCHIVE, ArchiveUnavailable, ensure_archive, read_manifest
from aircast.settings import Settings, StackSettings
from aircast_cli.stack import control
from tests import leaks

REPO = Path(__file__).resolve().parent.parent

# The archive days the tests read (sha256sum lines); see pytest_configure.
ARCHIVE_MANIFEST = REPO / "tests" / "fixtures" / "archive-days.sha256"


def archive_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "aircast" / "sensor-community" / "archive"


def pytest_configure(config: pytest.Config) -> None:
    """The real archive days the tests read: the local copy (``data.shared_dir``, the
    checkout's ``../shared``) when it is there, else fetched once from the public archive
    into the user's cache, checksummed, and every stage pointed at it through the
    environment. Without either, the session stops with one message saying what is
    missing and how to provide it."""
    data = Settings().data
    try:
        root = ensure_archive(
            read_manifest(ARCHIVE_MANIFEST),
            local=data.archive_dir,
            cache=archive_cache(),
            base_url=os.environ.get("AIRCAST_TEST_ARCHIVE_URL", PUBLIC_ARCHIVE),
        )
    except ArchiveUnavailable as exc:
        raise pytest.UsageError(str(exc)) from exc
    if root != data.archive_dir:
        os.environ["AIRCAST_DATA__SHARED_DIR"] = str(root.parent.parent)


def pytest_sessionstart(session: pytest.Session) -> None:
    leaks.install()  # after pytest's own unraisable hook is in place (pytest_configure)


@pytest.fixture(scope="module", autouse=True)
def _leaks_fail_their_own_file() -> Iterator[None]:
    """A socket left open in a reference cycle is found whenever the collector next runs:
    collected here, after the file's last test and its fixtures, the leak fails this
    file's last test (tests/leaks.py names the test that opened it), not some later file.
    Once a file: a full collection takes about 0.2 s in a process holding Ray and
    TensorFlow."""
    yield
    gc.collect()


# Tests that use these need the real servers of the session stack: marked ``servers``
# here, so `make test-fast` (``-m "not servers ..."``) runs only what needs none.
SERVER_FIXTURES = frozenset({"stack_dir", "stack_settings", "ray_session"})


# The longest files first: `make test` runs files on two pytest-xdist workers in
# collection order (--dist loadfile --no-loadscope-reorder), so these start at once and
# the short files fill in around them instead of one long file starting last.
LONGEST_FIRST = (
    "test_e2e.py",
    "test_flink_job.py",
    "test_keep.py",
    "test_training.py",
    "test_forecast_commands.py",
    "test_forecast_serve.py",
    "test_commands.py",
    "test_serve_api.py",
    "test_stack.py",
)


def _weight(item: pytest.Item) -> int:
    name = item.path.name
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.servers)
    items.sort(key=_weight)  # stable: a file's tests keep their order


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


# A test's stack takes any free ports: the default ones are a user's (and the newcomer
# test's, which runs `make run` as a user does, beside the other worker's stacks).
ANY_PORT = {
    "redis_port": 0,
    "kafka_port": 0,
    "influx_port": 0,
    "ray_port": 0,
    "ray_dashboard_port": 0,
}
ANY_PORT_ENV = {f"AIRCAST_STACK__{name.upper()}": "0" for name in ANY_PORT}


def any_port_stack(state_dir: Path, services: tuple[str, ...] | None = None) -> StackSettings:
    extra: dict[str, object] = {"services": services} if services else {}
    return StackSettings(state_dir=state_dir, **ANY_PORT, **extra)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def stack_settings(stack_dir: Path) -> Iterator[Settings]:
    """Settings pointing at a running stack started for this test session."""
    # The Flink job is not part of the session stack: its tests run their own jobs.
    base = Settings(stack=any_port_stack(stack_dir, ("redis", "kafka", "influxdb", "ray")))
    control.up(base)
    try:
        yield control.load_stack_settings(base, stack_dir.resolve())
    finally:
        control.down(base, purge=True)


@pytest.fixture()
def topic() -> str:
    return unique("topic")


@pytest.fixture()
def database() -> str:
    return unique("db")


@pytest.fixture()
def key_prefix() -> str:
    return unique("test") + ":"


@pytest.fixture(autouse=True)
def _no_developer_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`load_settings()` must not pick up a developer's own running stack."""
    monkeypatch.setenv("AIRCAST_STACK__STATE_DIR", str(tmp_path / "no-stack"))
    monkeypatch.delenv("AIRCAST_CONFIG", raising=False)


@pytest.fixture(scope="session")
def ray_session(stack_settings: Settings) -> Iterator[Settings]:
    """This pytest process connected (once) as a driver to the stack's Ray head."""
    import ray

    for attempt in range(3):  # a busy machine can make the first GCS connection time out
        if ray.is_initialized():
            break
        try:
            ray.init(
                address=stack_settings.ray.address, namespace="aircast-test", log_to_driver=False
            )
        except (ConnectionError, TimeoutError):
            if attempt == 2:
                raise
    yield stack_settings
    ray.shutdown()
