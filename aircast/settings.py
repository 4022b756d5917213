"""One frozen settings object for every stage.

Built once at an entry point (CLI command, Ray job, Flink job, Serve app) and passed
down; nothing in the project reads the environment anywhere else.

Sources, lowest to highest precedence:

1. the defaults below (a single-machine stack on 127.0.0.1),
2. a YAML file: ``--config PATH``, else ``$AIRCAST_CONFIG``, else the file the local
   stack writes (``<state_dir>/stack.yaml``) when a local stack is up,
3. environment variables ``AIRCAST_<SECTION>__<FIELD>``, e.g.
   ``AIRCAST_KAFKA__BOOTSTRAP_SERVERS=kafka:9092`` or ``AIRCAST_INFLUX__TOKEN=...``.

The same object therefore points every stage at a real deployment (a Kafka cluster,
InfluxDB 2.x/3.x with a token, Redis with a password) with no code change.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from aircast.errors import ConfigError

_FROZEN = ConfigDict(frozen=True, extra="forbid")

# The YAML layer of the settings being built by `load_settings` (below env vars).
_YAML_LAYER: ContextVar[dict[str, Any] | None] = ContextVar("aircast_yaml_layer", default=None)


class _YamlLayer(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return (_YAML_LAYER.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_YAML_LAYER.get() or {})


class KafkaSettings(BaseModel):
    model_config = _FROZEN

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # PEM file of the CA that signed the brokers' TLS certificates (SSL, SASL_SSL);
    # None: the system's trust store.
    ssl_ca_file: str | None = None
    client_id: str = "aircast"
    # Topics. One raw topic keyed by sensor; readings go to one keyed topic per
    # the processing job's choice; everything rejected goes to one dead-letter topic.
    raw_topic: str = "aircast.raw"
    readings_topic: str = "aircast.readings"
    aggregates_topic: str = "aircast.aggregates"
    dead_letter_topic: str = "aircast.dead-letter"
    partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    # Every producer (scrapers, the Flink job's sinks, dead letters, backfills) sends
    # batches compressed with this, and brokers store them as sent. The messages are
    # JSON, and a batch holds many records of the same shape: zstd keeps about half of
    # lz4's bytes for about the same CPU (raw records ~7x smaller than uncompressed),
    # and a broker keeps what it is sent. The choices are the codecs every client here
    # (librdkafka, kafka-python with zstandard, Java with zstd-jni) reads.
    compression: Literal["none", "gzip", "lz4", "zstd"] = "zstd"


class InfluxSettings(BaseModel):
    model_config = _FROZEN

    url: str = "http://127.0.0.1:8086"
    # InfluxDB 1.x: Basic auth with username/password. InfluxDB 2.x/3.x through
    # the v1 compatibility API: a token (sent as ``Authorization: Token ...``).
    username: str | None = "aircast"
    password: SecretStr | None = SecretStr("aircast-local")
    token: SecretStr | None = None
    raw_database: str = "aircast_raw"
    raw_retention: str = "30d"
    aggregates_database: str = "aircast_aggregates"
    aggregates_retention: str = "INF"
    predictions_database: str = "aircast_predictions"
    predictions_retention: str = "90d"
    timeout_s: float = Field(default=10.0, gt=0)
    retries: int = Field(default=5, ge=0)
    backoff_s: float = Field(default=0.5, gt=0)
    # The write path manages databases itself only where it may (InfluxDB 1.x);
    # on 2.x/3.x the deployment provisions buckets and DBRP mappings.
    manage_databases: bool = True


class RedisSettings(BaseModel):
    model_config = _FROZEN

    url: str = "redis://127.0.0.1:6379/0"
    password: SecretStr | None = None
    key_prefix: str = "aircast:"


class RaySettings(BaseModel):
    model_config = _FROZEN

    # "auto" joins the cluster the job runs in; a local stack writes its own address.
    address: str = "auto"
    dashboard_url: str = "http://127.0.0.1:8265"
    namespace: str = "aircast"
    # One auth mode for the cluster and for `ray job submit`.
    auth_mode: Literal["disabled", "token"] = "disabled"


class LocalFlinkSettings(BaseModel):
    """The local stack's PyFlink job: its interpreter and its JVM's size and folders
    (on Kubernetes the Flink operator's pods own all of these)."""

    model_config = _FROZEN

    python: Path = Path(".venv-flink/bin/python")
    # Heap of the local mini-cluster's JVM (thread mode: the Python functions run in it
    # too). Unset, the JVM takes a quarter of the machine's memory and keeps it.
    heap_mb: int = Field(default=3072, ge=256)
    # Further options of the local mini-cluster's JVM. The throughput collector: G1's
    # concurrent threads and barriers compete with the job for a small machine's cores
    # (bench-flink shows the job's share of the identity job's rate with either).
    jvm_options: list[str] = Field(default_factory=lambda: ["-XX:+UseParallelGC"])
    # The mini-cluster's own log files (JVM, Python workers).
    log_dir: Path = Path(".aircast/flink/log")
    # The local JVM's temporary files (java.io.tmpdir: the table planner's 43 MB jar,
    # extracted at every start, the mini-cluster's blobs and caches). The JVM deletes
    # them only when it exits cleanly; a stopped or killed job left them in /tmp. One
    # job per folder: it is emptied when the job starts.
    tmp_dir: Path = Path(".aircast/flink/tmp")


class StackSettings(BaseModel):
    """Where the local single-machine stack keeps its data, logs and state."""

    model_config = _FROZEN

    state_dir: Path = Path(".aircast")
    # Preferred ports; a taken port is replaced by a free one at `stack up`, and 0 asks
    # for any free one (tests: their stacks leave the defaults to a user's).
    redis_port: int = 6379
    kafka_port: int = 9092
    influx_port: int = 8086
    ray_port: int = 6380
    ray_dashboard_port: int = 8265
    services: tuple[str, ...] = ("redis", "kafka", "influxdb", "ray", "flink")
    startup_timeout_s: float = Field(default=90.0, gt=0)
    # influxd's Go heap target (GOMEMLIMIT, MiB; 0 leaves Go's default). Without one its
    # heap follows each heavy query at 10x the network, and on one machine that growth
    # is paid for by Ray's memory monitor killing Ray workers. The target must sit above
    # what a 10x hour keeps live (about 5.7 GiB): too low a target (2-4 GiB) has Go
    # collecting all the time on the cores the writes need (docs/operations.md).
    influx_memory_limit_mb: int = Field(default=6144, ge=0)
    flink: LocalFlinkSettings = Field(default_factory=LocalFlinkSettings)

    @field_validator("services", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(s.strip() for s in value.split(",") if s.strip())
        return value


class DataSettings(BaseModel):
    model_config = _FROZEN

    # Real sensor.community data shipped beside the repo (never copied into it).
    shared_dir: Path = Path("../shared/data")

    @property
    def archive_dir(self) -> Path:
        return self.shared_dir / "sensor-community" / "archive"

    @property
    def feed_sample(self) -> Path:
        return self.shared_dir / "sensor-community" / "static-v1-data-sample-2019-04-16.json"


class IngestSettings(BaseModel):
    """The scraper: where snapshots come from, how they are sharded and geocoded."""

    model_config = _FROZEN

    source: Literal["auto", "live", "archive", "simulator"] = "auto"
    live_url: str = "https://data.sensor.community/static/v1/data.json"
    # Scraping schedule: the API's window is 5 minutes.
    interval_s: float = Field(default=300.0, gt=0)
    scrapers: int = Field(default=4, ge=1)
    # A scraper hands its shard to the producer this many records at a time, so the
    # broker (and the Flink job) has the first of them early instead of at the end.
    chunk_records: int = Field(default=2_000, ge=1)
    timeout_s: float = Field(default=30.0, gt=0)
    retries: int = Field(default=3, ge=0)
    # Archive replay: a folder or an http(s) base URL laid out like the public archive.
    archive: str | None = None
    archive_from: str | None = None  # YYYY-MM-DD
    archive_to: str | None = None
    archive_speedup: float = Field(default=60.0, gt=0)
    archive_shift_to_now: bool = True
    # Simulator: a synthetic network, deterministic by seed.
    simulator_sensors: int = Field(default=300, ge=1)
    simulator_seed: int = 42
    simulator_port: int = 8599
    # How often the simulated feed publishes a new last-5-minutes file (windows overlap,
    # as the live API's do: the ingest dedupes across snapshots).
    simulator_refresh_s: int = Field(default=60, ge=1, le=300)
    # Hours of the simulated network's past written to InfluxDB before its first file,
    # so charts and forecasts have history at once (0: start empty).
    simulator_history_h: int = Field(default=24, ge=0, le=24 * 30)
    # Geocoding: offline GeoNames by default; Nominatim (1 request/s) only when asked.
    geocoder: Literal["offline", "nominatim"] = "offline"
    nominatim_url: str = "https://nominatim.openstreetmap.org/reverse"
    place_ttl_s: int = Field(default=30 * 86400, ge=60)
    # A reading already produced is never produced again: sensor+timestamp kept this long.
    dedupe_ttl_s: int = Field(default=2 * 86400, ge=60)


class FlinkSettings(BaseModel):
    """The PyFlink job (its own virtualenv)."""

    model_config = _FROZEN

    # The job's JVM fast lane (flink/java, built by `make setup`): clean records become
    # readings in the JVM, the rest go to Python. Unset: build/aircast-flink.jar in the
    # project (the image sets its own).
    jar: Path | None = None
    parallelism: int = Field(default=1, ge=1)
    group_id: str = "aircast-flink"
    delivery: Literal["at-least-once", "exactly-once"] = "at-least-once"
    checkpoint_interval_ms: int = Field(default=10_000, ge=100)
    checkpoint_dir: Path = Path(".aircast/flink/checkpoints")
    # A window's one aggregate is written when the watermark passes its end, the
    # watermark trailing the newest reading by both of these (15 minutes by default);
    # readings for a window after that are ``late``.
    watermark_out_of_orderness_s: int = Field(default=300, ge=0)
    allowed_lateness_s: int = Field(default=600, ge=0)
    # The watermark is kept per raw partition (from the message timestamps: the
    # measurement times the ingest sets) and the job's is the least of them, so a
    # partition read ahead of the others cannot make their readings late. A partition
    # with nothing new for this long stops holding it back (live, every partition idles
    # between snapshots).
    idle_partition_s: int = Field(default=30, ge=1)
    restart_attempts: int = Field(default=10, ge=0)
    restart_delay_ms: int = Field(default=2_000, ge=0)
    # A (sensor, measure, timestamp) seen again within this long is a duplicate. The
    # ingest's Redis memory (ingest.dedupe_ttl_s, 2 days) keeps repeats of the feed out;
    # the job's catches what gets past it: a scraper retried after producing but before
    # marking seen, a Redis restart that lost its keys (the live file covers 5 minutes).
    # Two hours is ample for those and bounds the job's state: per series (sensor and
    # measure) the times of its last two hours, 16 bytes each (at 10x the network ~2.3M
    # readings an hour: ~75 MB). Seconds are allowed for tests of the expiry.
    dedupe_ttl_s: int = Field(default=2 * 3600, ge=1)
    # Python functions inside the JVM's threads ("thread", PyFlink's embedded
    # interpreter: no gRPC bundles, ~1.7x the job's throughput here) or in a separate
    # worker process ("process").
    execution_mode: Literal["thread", "process"] = "thread"
    # Further Flink options (Flink 2.0 names), over the ones the job derives.
    options: dict[str, str] = Field(default_factory=dict)


class CollectSettings(BaseModel):
    """Collector actors: Kafka readings/aggregates → InfluxDB in batches."""

    model_config = _FROZEN

    actors: int = Field(default=2, ge=1)
    group_id: str = "aircast-collector"
    batch_size: int = Field(default=5_000, ge=1)
    linger_ms: int = Field(default=1_000, ge=0)
    # Bounded memory: at most this many points buffered per actor before pausing.
    max_buffered: int = Field(default=50_000, ge=1)


class TrainSettings(BaseModel):
    """Per-sensor forecasting models on Ray Train."""

    model_config = _FROZEN

    workers: int = Field(default=2, ge=1)
    window: int = Field(default=36, ge=2)  # past 10-minute steps the model sees (6 h)
    horizons: tuple[int, ...] = (1, 6, 36)  # steps ahead: 10 min, 1 h, 6 h
    epochs: int = Field(default=30, ge=1)
    batch_size: int = Field(default=64, ge=1)
    storage_path: Path = Path(".aircast/train")
    registry_dir: Path = Path(".aircast/models")
    retrain_interval_s: float = Field(default=86_400.0, gt=0)
    units: int = Field(default=32, ge=1)  # GRU and dense width
    patience: int = Field(default=3, ge=1)  # early-stopping epochs without improvement
    threads_per_worker: int = Field(default=1, ge=1)  # CPUs (and TF threads) per Train worker
    history_days: int = Field(default=14, ge=2)  # days of aggregates a training job reads
    measures: tuple[str, ...] = ("P1", "P2", "temperature", "humidity", "pressure")
    # Per-measure pre-training (training.pretrain): epochs (0 = off) and the most series
    # per measure it reads; every per-sensor network is then fine-tuned from it.
    pretrain_epochs: int = Field(default=2, ge=0)
    pretrain_series: int = Field(default=200, ge=1)
    # What a fine-tune from the pre-trained network fits: "head" (the dense layers on
    # the frozen GRU's features: a nightly retrain of every series stays cheap) or "all".
    finetune: Literal["head", "all"] = "head"
    # Checkpoints (Ray Train reports) per fine-tune run, whatever its size: each is a
    # barrier and a copy of every model so far; a killed worker refits one slot at most.
    reports_per_run: int = Field(default=10, ge=1)


class ServeSettings(BaseModel):
    """The Ray Serve HTTP app."""

    model_config = _FROZEN

    host: str = "127.0.0.1"
    port: int = 8000
    route_prefix: str = "/"
    replicas: int = Field(default=1, ge=1)
    max_ongoing_requests: int = Field(default=256, ge=1)
    admin_token: SecretStr = SecretStr("aircast-local-admin")
    forecast_refresh_s: float = Field(default=600.0, gt=0)
    model_cache_size: int = Field(default=64, ge=1)
    # Each API replica keeps a looked-up forecast this long before asking Redis again
    # (forecasts change every forecast_refresh_s; 0 turns the memo off).
    forecast_memo_s: float = Field(default=2.0, ge=0)
    # GET /sensors lists sensors seen this recently, re-read at most this often.
    sensors_lookback_s: float = Field(default=86_400.0, gt=0)
    sensors_cache_s: float = Field(default=10.0, ge=0)
    # Dashboard map tiles (e.g. https://tile.openstreetmap.org/{z}/{x}/{y}.png); none by
    # default: the map works offline on a plain lat/lon grid.
    tile_url: str | None = None
    tile_attribution: str = ""
    # Browser origins allowed to call the API (CORS); empty: same origin only.
    cors_origins: tuple[str, ...] = ()
    # Paged listings: the default and the largest page a client may ask for.
    page_size: int = Field(default=1_000, ge=1)
    page_size_max: int = Field(default=20_000, ge=1)
    # The map's per-measure layer (latest value, 1 h and 24 h means) is rebuilt at most
    # this often; clients revalidate it with its ETag.
    map_cache_s: float = Field(default=60.0, ge=0)
    # A sensor without a reading for this long is drawn as stale (greyed).
    stale_after_s: float = Field(default=3_600.0, gt=0)


class AlertSettings(BaseModel):
    """Threshold alerts over the 10-minute aggregates (rules live in Redis)."""

    model_config = _FROZEN

    enabled: bool = True
    topic: str = "aircast.alerts"
    group_id: str = "aircast-alerts"
    # Where fired and resolved alerts are POSTed when a rule names no webhook of its own.
    webhook_url: str | None = None
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    webhook_retries: int = Field(default=3, ge=0)
    # How often forecast-based rules are checked against the served forecasts.
    forecast_check_s: float = Field(default=300.0, gt=0)


class Settings(BaseSettings):
    """The root settings object; frozen, so it can be shared across actors safely."""

    model_config = SettingsConfigDict(
        env_prefix="AIRCAST_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    kafka: KafkaSettings = KafkaSettings()
    influx: InfluxSettings = InfluxSettings()
    redis: RedisSettings = RedisSettings()
    ray: RaySettings = RaySettings()
    stack: StackSettings = StackSettings()
    data: DataSettings = DataSettings()
    ingest: IngestSettings = IngestSettings()
    flink: FlinkSettings = FlinkSettings()
    collect: CollectSettings = CollectSettings()
    train: TrainSettings = TrainSettings()
    serve: ServeSettings = ServeSettings()
    alerts: AlertSettings = AlertSettings()
    log_level: str = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Code (tests, CLI flags) beats the environment, which beats the YAML file.
        return (init_settings, env_settings, _YamlLayer(settings_cls))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping, not {type(loaded).__name__}")
    return loaded


def stack_file(state_dir: Path) -> Path:
    """The settings overlay a running local stack writes (its real ports)."""
    return state_dir / "stack.yaml"


# The local stack's own credentials: fine where every endpoint is on this machine,
# refused anywhere else (a deployment that forgot its Secret must not run with a
# password that is published in this file).
LOCAL_SECRETS: dict[str, str] = {
    "influx.password": "aircast-local",
    "serve.admin_token": "aircast-local-admin",
}
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def _host(endpoint: str) -> str:
    rest = endpoint.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    return rest.rsplit(":", 1)[0] if rest.count(":") == 1 or rest.startswith("[") else rest


def is_local(settings: Settings, environ: Mapping[str, str]) -> bool:
    """Every endpoint on this machine, and not in a Kubernetes pod."""
    if environ.get("KUBERNETES_SERVICE_HOST"):
        return False
    endpoints = [
        *settings.kafka.bootstrap_servers.split(","),
        settings.influx.url,
        settings.redis.url,
    ]
    return all(_host(e.strip()) in _LOOPBACK for e in endpoints)


def local_secrets_in_use(settings: Settings) -> list[str]:
    """The settings still holding the local stack's published credentials."""
    used = []
    password = settings.influx.password
    if (
        settings.influx.token is None
        and password is not None
        and password.get_secret_value() == LOCAL_SECRETS["influx.password"]
    ):
        used.append("influx.password")
    if settings.serve.admin_token.get_secret_value() == LOCAL_SECRETS["serve.admin_token"]:
        used.append("serve.admin_token")
    return used


def check_secrets(
    settings: Settings, environ: Mapping[str, str], names: tuple[str, ...] = tuple(LOCAL_SECRETS)
) -> None:
    """Refuse the local default secrets among ``names`` (those the calling component
    uses: a Flink pod holds no admin token) outside the local stack."""
    if is_local(settings, environ):
        return
    used = [name for name in local_secrets_in_use(settings) if name in names]
    if used:
        listed = ", ".join(f"{u} (AIRCAST_{u.replace('.', '__').upper()})" for u in used)
        raise ConfigError(
            f"refusing to start outside the local stack with its published default "
            f"credentials: set {listed} from a Secret"
        )


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings at an entry point.

    ``config`` (or ``$AIRCAST_CONFIG``) is read as YAML; without either, a running
    local stack's ``stack.yaml`` is used so every command finds the stack.
    ``overrides`` win over both (for CLI flags).
    """
    data: dict[str, Any] = {}
    env_config = os.environ.get("AIRCAST_CONFIG")
    path = config or (Path(env_config) if env_config else None)
    if path is not None:
        data = _read_yaml(path)
    else:
        state_dir = Path(os.environ.get("AIRCAST_STACK__STATE_DIR", str(StackSettings().state_dir)))
        local = stack_file(state_dir)
        if local.is_file():
            data = _read_yaml(local)
    token = _YAML_LAYER.set(data)
    try:
        settings = Settings(**overrides)
    except ValueError as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc
    finally:
        _YAML_LAYER.reset(token)
    return settings
