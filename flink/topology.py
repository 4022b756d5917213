"""The PyFlink wiring of the job (see :mod:`flink.job` for what it does and why)."""

from __future__ import annotations

from pathlib import Path

from pyflink.common import Configuration, Duration, Types, WatermarkStrategy
from pyflink.common.serialization import SimpleStringSchema
from pyflink.datastream import DataStream, KeyedStream, StreamExecutionEnvironment
from pyflink.datastream.connectors.kafka import KafkaOffsetsInitializer, KafkaSource
from pyflink.java_gateway import get_gateway
from pyflink.table import StreamTableEnvironment

from aircast.settings import Settings
from flink import functions as F
from flink.config import kafka_properties, sink_ddl

PACKAGE_DIR = Path(__file__).resolve().parent


def environment(conf: dict[str, str]) -> StreamExecutionEnvironment:
    configuration = Configuration()
    for key, value in conf.items():
        configuration.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(configuration)
    # The Python workers import this package wherever it is installed (or not).
    env.add_python_file(str(PACKAGE_DIR))
    return env


def _committed_else_earliest() -> KafkaOffsetsInitializer:
    # PyFlink's KafkaOffsetResetStrategy names the *shaded* kafka-clients class of the
    # fat connector jar; the connector shipped here uses the plain one.
    jvm = get_gateway().jvm
    earliest = jvm.org.apache.kafka.clients.consumer.OffsetResetStrategy.EARLIEST
    initializer = jvm.org.apache.flink.connector.kafka.source.enumerator.initializer
    return KafkaOffsetsInitializer(initializer.OffsetsInitializer.committedOffsets(earliest))


def _source(settings: Settings) -> KafkaSource:
    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(settings.kafka.bootstrap_servers)
        .set_topics(settings.kafka.raw_topic)
        .set_group_id(settings.flink.group_id)
        .set_client_id_prefix(f"{settings.flink.group_id}-source")
        # A restored checkpoint wins; else the group's committed offsets; else earliest.
        .set_starting_offsets(_committed_else_earliest())
        .set_value_only_deserializer(SimpleStringSchema())
        # Upstream may write transactionally too: never read aborted records.
        .set_property("isolation.level", "read_committed")
    )
    for key, value in kafka_properties(settings.kafka).items():
        if key != "bootstrap.servers":
            builder = builder.set_property(key, value)
    return builder.build()


def _watermarks(settings: Settings) -> WatermarkStrategy:
    # No ``with_idleness``: with it, this PyFlink 2.0.1 mini-cluster never fired a
    # window (measured). At parallelism 1 nothing can be idle; above 1, every split
    # instance sees readings as long as every raw partition does.
    return WatermarkStrategy.for_bounded_out_of_orderness(
        Duration.of_seconds(settings.flink.watermark_out_of_orderness_s)
    )


def _keyed_readings(split: DataStream, settings: Settings) -> KeyedStream:
    """Event time, watermarks and the key-by, all in Java on what the split emitted.

    PyFlink's own ``assign_timestamps_and_watermarks`` (Python timestamp assigner) and
    ``key_by`` (Python key selector) would each add a Python operator; the split
    already emits their output shapes — ``((sensor id, record), event ms)`` — so the same
    Java functions they use (timestamp from field 1, key from field 0) apply directly
    and a record crosses the Python boundary twice, not four times.
    """
    jvm = get_gateway().jvm
    eventtime = jvm.org.apache.flink.streaming.api.functions.python.eventtime
    strategy = _watermarks(settings)._j_watermark_strategy.withTimestampAssigner(
        eventtime.CustomTimestampAssigner()
    )
    j_keyed = (
        split._j_data_stream.assignTimestampsAndWatermarks(strategy)
        .name("event-time")
        .map(eventtime.RemoveTimestampMapFunction(), F.KEYED_TYPE.get_java_type_info())
        .name("drop-event-time-field")
        .keyBy(jvm.KeyByKeySelector(), Types.ROW([Types.STRING()]).get_java_type_info())
    )
    return KeyedStream(j_keyed, Types.PICKLED_BYTE_ARRAY(), split)


def attach(env: StreamExecutionEnvironment, settings: Settings) -> None:
    """Add the whole topology (source, functions, the three keyed Kafka sinks) to ``env``."""
    f = settings.flink
    # Stable uids: a restart maps checkpointed state (offsets, seen timestamps, open
    # windows, timers) back onto the same operators.
    raw = env.from_source(_source(settings), WatermarkStrategy.no_watermarks(), "raw-topic").uid(
        "raw-topic-source"
    )
    split = raw.process(
        F.SplitMessage(settings.kafka.raw_topic), output_type=F.TIMESTAMPED_TYPE
    ).name("split-validate")
    readings = (
        _keyed_readings(split, settings)
        .process(F.SensorReadings(f.dedupe_ttl_s, f.allowed_lateness_s), output_type=F.KV_TYPE)
        .name("dedupe-aggregate-10min")
        # Keyed by sensor; checkpoints of the earlier per-measure operator (uid
        # "dedupe-aggregate-10min") do not restore into it, hence the new uid.
        .uid("sensor-dedupe-aggregate-10min")
    )
    aggregates = readings.get_side_output(F.AGGREGATES)
    dead = split.get_side_output(F.DEAD_LETTERS).union(readings.get_side_output(F.DEAD_LETTERS))

    t_env = StreamTableEnvironment.create(env)
    sinks = (
        ("readings_sink", settings.kafka.readings_topic, "readings", readings),
        ("aggregates_sink", settings.kafka.aggregates_topic, "aggregates", aggregates),
        ("dead_letter_sink", settings.kafka.dead_letter_topic, "dead-letter", dead),
    )
    statements = t_env.create_statement_set()
    for table, topic, name, stream in sinks:
        t_env.execute_sql(sink_ddl(table, topic, settings, name))
        statements.add_insert(table, t_env.from_data_stream(stream))
    statements.attach_as_datastream()
