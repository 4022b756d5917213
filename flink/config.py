"""What the job asks of Flink, derived from the settings: plain data, no PyFlink import.

* :func:`flink_configuration` — checkpointing, delivery, restart strategy, recovery;
* :func:`latest_checkpoint` — the retained checkpoint a (re)started job resumes from;
* :func:`kafka_properties` / :func:`sink_ddl` — the Kafka clients' options.

Two modes (:data:`Mode`):

* ``local`` (the local stack, tests): the job owns its mini-cluster. Checkpoints live
  under ``<checkpoint_dir>/<job id>/chk-<n>/_metadata`` and are kept when the job is
  cancelled or killed (externalized, ``RETAIN_ON_CANCELLATION``), so the next start
  finds the newest complete one and carries on from its offsets and state.
* ``managed`` (the Flink Kubernetes operator, a FlinkDeployment): the operator owns
  checkpoint and savepoint storage, the restore path of every (re)start and upgrade,
  and the parallelism. The job sets none of :data:`OPERATOR_OWNED`; they come from the
  FlinkDeployment (``flinkConfiguration``, ``job.parallelism``, ``upgradeMode``,
  ``initialSavepointPath``), and ``flink.options`` may not set them either.
"""

from __future__ import annotations

import json
import os
import sys
import sysconfig
from pathlib import Path
from typing import Literal

from aircast import tuning
from aircast.errors import ConfigError
from aircast.settings import KafkaSettings, Settings

Mode = Literal["local", "managed"]
MODES: tuple[Mode, ...] = ("local", "managed")
# What the Flink Kubernetes operator decides in managed mode. A job that set these would
# fight it: its own restore path overrides the checkpoint or savepoint the operator
# upgrades from (last-state, savepoint), ignore-unclaimed-state is allowNonRestoredState
# by another name, and parallelism.default overrides spec.job.parallelism and the
# operator's autoscaler.
OPERATOR_OWNED: tuple[str, ...] = (
    "parallelism.default",
    "execution.state-recovery.path",
    "execution.state-recovery.ignore-unclaimed-state",
    "execution.state-recovery.claim-mode",
    "execution.checkpointing.storage",
    "execution.checkpointing.dir",
    "execution.checkpointing.savepoint-dir",
    "execution.checkpointing.externalized-checkpoint-retention",
    "execution.checkpointing.num-retained",
)

JOB_NAME = "aircast-flink"
# Where the job's packages (flink, aircast) are: the embedded interpreter imports them.
PROJECT_DIR = Path(__file__).resolve().parent.parent


def lane_jar(settings: Settings) -> Path:
    """The JVM fast lane's jar (``flink.jar``, else the one `make setup` builds)."""
    return settings.flink.jar or PROJECT_DIR / "build" / "aircast-flink.jar"


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete checkpoint under ``checkpoint_dir`` (any job id), or None.

    A checkpoint is complete once its ``_metadata`` file exists (Flink writes it last).
    """
    if not checkpoint_dir.is_dir():
        return None
    complete = [m.parent for m in checkpoint_dir.glob("*/chk-*/_metadata") if m.is_file()]
    if not complete:
        return None
    return max(complete, key=lambda p: (p.stat().st_mtime_ns, _checkpoint_number(p)))


def _checkpoint_number(path: Path) -> int:
    try:
        return int(path.name.removeprefix("chk-"))
    except ValueError:
        return -1


def flink_configuration(
    settings: Settings, resume_from: Path | None, mode: Mode = "local"
) -> dict[str, str]:
    """The job's configuration (Flink 2.0 option names). ``local``: everything, for the
    job's own mini-cluster; ``managed``: none of :data:`OPERATOR_OWNED` (a ``resume_from``
    or an operator-owned key in ``flink.options`` is a :class:`ConfigError`)."""
    f = settings.flink
    exactly_once = f.delivery == "exactly-once"
    conf = {
        "pipeline.name": JOB_NAME,
        # How often and how consistently: the job's delivery guarantee depends on them.
        "execution.checkpointing.interval": f"{f.checkpoint_interval_ms} ms",
        "execution.checkpointing.mode": "EXACTLY_ONCE" if exactly_once else "AT_LEAST_ONCE",
        # Chained operators hand records on without a defensive copy: the SQL operators
        # are built for it and the Python ones convert what they get (bench-flink: the
        # job ~15 % faster).
        "pipeline.object-reuse": "true",
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": str(f.restart_attempts),
        "restart-strategy.fixed-delay.delay": f"{f.restart_delay_ms} ms",
        # The Python workers run the interpreter of this (Flink) virtualenv.
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
        "python.execution-mode": f.execution_mode,
        # In thread mode the JVM embeds the base interpreter, which does not see the
        # virtualenv's packages (pemja, pyflink) unless told where they are, nor the
        # job's own (flink, aircast): files shipped with add_python_file reach only
        # process-mode workers, so thread mode found them only when started from here.
        "python.pythonpath": os.pathsep.join([str(PROJECT_DIR), sysconfig.get_paths()["purelib"]]),
    }
    if mode == "managed":
        if resume_from is not None:
            raise ConfigError(
                "managed mode: the operator chooses the restore path (upgradeMode, "
                "initialSavepointPath), the job does not"
            )
        owned = sorted(set(f.options) & set(OPERATOR_OWNED))
        if owned:
            raise ConfigError(
                f"managed mode: flink.options sets {', '.join(owned)}, which the Flink "
                "operator owns; set them in the FlinkDeployment instead"
            )
        conf.update(f.options)
        return conf
    conf.update(
        {
            "parallelism.default": str(f.parallelism),
            "execution.checkpointing.storage": "filesystem",
            "execution.checkpointing.dir": f.checkpoint_dir.resolve().as_uri(),
            "execution.checkpointing.externalized-checkpoint-retention": ("RETAIN_ON_CANCELLATION"),
            "execution.checkpointing.num-retained": "2",
        }
    )
    if resume_from is not None:
        conf["execution.state-recovery.path"] = resume_from.resolve().as_uri()
        # A checkpoint of an earlier topology (other operators, e.g. before the dedupe
        # and windows moved to SQL) restores what still maps (the source offsets)
        # instead of failing every start; the old operators' state is dropped.
        conf["execution.state-recovery.ignore-unclaimed-state"] = "true"
    conf.update(f.options)
    return conf


def kafka_properties(kafka: KafkaSettings) -> dict[str, str]:
    """Kafka client properties (Java names) shared by the source and the sinks."""
    props = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "security.protocol": kafka.security_protocol,
    }
    if kafka.ssl_ca_file:
        props["ssl.truststore.type"] = "PEM"
        props["ssl.truststore.location"] = kafka.ssl_ca_file
    if kafka.sasl_mechanism:
        props["sasl.mechanism"] = kafka.sasl_mechanism
        password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else ""
        module = (
            "org.apache.kafka.common.security.scram.ScramLoginModule"
            if kafka.sasl_mechanism.upper().startswith("SCRAM")
            else "org.apache.kafka.common.security.plain.PlainLoginModule"
        )
        props["sasl.jaas.config"] = (
            f"{module} required username={json.dumps(kafka.sasl_username or '')} "
            f"password={json.dumps(password)};"
        )
    return props


def sql_string(text: str) -> str:
    """A SQL string literal of ``text``."""
    return "'" + text.replace("'", "''") + "'"


def sink_ddl(table: str, topic: str, settings: Settings, name: str) -> str:
    """A keyed Kafka sink table ``(k STRING, v STRING)``: k is the message key, v its
    value, both written as UTF-8 bytes as they are (``raw`` format).

    The Table API's Kafka sink is used because PyFlink's DataStream ``KafkaSink`` can only
    serialize the whole element for both key and value. It is the same ``KafkaSink``
    underneath, with the same delivery guarantees; the key's hash picks the partition.
    """
    options = {
        "connector": "kafka",
        "topic": topic,
        "key.format": "raw",
        "key.fields": "k",
        "value.format": "raw",
        "value.fields-include": "EXCEPT_KEY",
        "sink.delivery-guarantee": settings.flink.delivery,
        # Fewer, larger produce requests (the client's 16 KB batches are ~50 readings):
        # the broker shares the machine's cores with the job.
        "properties.batch.size": str(256 * 1024),
        "properties.linger.ms": "20",
        "properties.compression.type": settings.kafka.compression,
    }
    if settings.flink.delivery == "exactly-once":
        options["sink.transactional-id-prefix"] = f"{settings.flink.group_id}-{name}"
        options["properties.transaction.timeout.ms"] = str(tuning.FLINK_TRANSACTION_TIMEOUT_MS)
    for key, value in kafka_properties(settings.kafka).items():
        options[f"properties.{key}"] = value
    body = ",\n  ".join(f"{sql_string(k)} = {sql_string(v)}" for k, v in options.items())
    return f"CREATE TEMPORARY TABLE {table} (k STRING, v STRING) WITH (\n  {body}\n)"
