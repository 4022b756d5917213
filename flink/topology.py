"""The PyFlink wiring of the job (see :mod:`flink.job` for what it does and why)."""

from __future__ import annotations

from pathlib import Path

from pyflink.common import Configuration, Duration, Types, WatermarkStrategy
from pyflink.common.serialization import SimpleStringSchema
from pyflink.common.time import Time
from pyflink.datastream import DataStream, StreamExecutionEnvironment
from pyflink.datastream.connectors.kafka import KafkaOffsetsInitializer, KafkaSource
from pyflink.datastream.window import TumblingEventTimeWindows
from pyflink.java_gateway import get_gateway
from pyflink.table import StreamTableEnvironment

from aircast.records import AGGREGATE_WINDOW_S
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
    return (
        WatermarkStrategy.for_bounded_out_of_orderness(
            Duration.of_seconds(settings.flink.watermark_out_of_orderness_s)
        ).with_timestamp_assigner(F.ReadingTime())
        # No ``with_idleness``: with it, this PyFlink 2.0.1 mini-cluster never fired a
        # window (measured). At parallelism 1 nothing can be idle; above 1, every split
        # instance sees readings as long as every raw partition does.
    )


def _windows(readings: DataStream, settings: Settings) -> tuple[DataStream, DataStream]:
    lateness_s = settings.flink.allowed_lateness_s
    aggregates = (
        readings.key_by(F.reading_key, key_type=Types.STRING())
        .window(TumblingEventTimeWindows.of(Time.seconds(AGGREGATE_WINDOW_S)))
        .allowed_lateness(lateness_s * 1000)
        .side_output_late_data(F.LATE_READINGS)
        .process(F.AggregateWindow(), output_type=F.KV_TYPE)
        .name("aggregate-10min")
        .uid("aggregate-10min")
    )
    late = aggregates.get_side_output(F.LATE_READINGS).map(
        F.LateRow(lateness_s), output_type=F.KV_TYPE
    )
    return aggregates, late


def attach(env: StreamExecutionEnvironment, settings: Settings) -> None:
    """Add the whole topology (source, functions, the three keyed Kafka sinks) to ``env``."""
    # Stable uids: a restart maps checkpointed state (offsets, seen timestamps, open
    # windows) back onto the same operators.
    raw = env.from_source(_source(settings), WatermarkStrategy.no_watermarks(), "raw-topic").uid(
        "raw-topic-source"
    )
    split = raw.process(
        F.SplitMessage(settings.kafka.raw_topic), output_type=Types.PICKLED_BYTE_ARRAY()
    ).name("split-validate")
    # Event time is set right after the split (set later, behind the keyed dedupe
    # operator, PyFlink's fused timestamp extraction never advanced the windows).
    readings = (
        split.assign_timestamps_and_watermarks(_watermarks(settings))
        .key_by(F.reading_key, key_type=Types.STRING())
        .process(
            F.DropDuplicates(settings.flink.dedupe_ttl_s), output_type=Types.PICKLED_BYTE_ARRAY()
        )
        .name("drop-duplicates")
        .uid("drop-duplicates")
    )
    aggregates, late = _windows(readings, settings)
    dead = split.get_side_output(F.DEAD_LETTERS).union(
        readings.get_side_output(F.DEAD_LETTERS), late
    )
    reading_rows = readings.map(F.ReadingRow(), output_type=F.KV_TYPE)

    t_env = StreamTableEnvironment.create(env)
    sinks = (
        ("readings_sink", settings.kafka.readings_topic, "readings", reading_rows),
        ("aggregates_sink", settings.kafka.aggregates_topic, "aggregates", aggregates),
        ("dead_letter_sink", settings.kafka.dead_letter_topic, "dead-letter", dead),
    )
    statements = t_env.create_statement_set()
    for table, topic, name, stream in sinks:
        t_env.execute_sql(sink_ddl(table, topic, settings, name))
        statements.add_insert(table, t_env.from_data_stream(stream))
    statements.attach_as_datastream()
