"""The PyFlink wiring of the job (see :mod:`flink.job` for what it does and why).

Two lanes for the split, the dedupe and windows in the JVM, then Flink SQL:

* ``aircast.flink.FastSplit`` (JVM, flink/java) — a clean record → its rows; every other
  message → :class:`~flink.functions.SplitMessage` (Python) — raw message → one row per
  valid value ``(event ms, reading key, Reading JSON, value)``; rejections leave through
  the dead-letter side output. The two lanes' rows are one stream;
* ``aircast.flink.FirstSeen`` (JVM, keyed by reading key) keeps the first sighting of
  each (reading key, event time); a sighting again within ``flink.dedupe_ttl_s``:
  ``duplicate``;
* ``aircast.flink.Windows`` (JVM, chained after FirstSeen on the same keys): 10-minute
  tumbling event-time windows per reading key (mean, min, max, count), each written
  once, final;
* Flink SQL (Java): the readings, the aggregates and the letters to their topics;
  readings behind a fired window: ``late``. The aggregates' JSON is laid out
  (:func:`flink.transforms.aggregate_layout`) and the letters' is SQL generated
  (:func:`flink.transforms.letter_json_sql`) from the domain's dataclasses, so their
  shape is defined once, in :mod:`aircast.records`.

Why the JVM: a Python keyed function with state and timers pays a call from Python into
the JVM for every state access and timer; the same work in Flink's own operators costs a
fraction of that, and the Python left is one pass per record for the messages the fast
lane leaves. The dedupe and the windows are JVM functions rather than Flink SQL: SQL's
count over (key, time) with a state TTL and its window aggregate cost several times the
keyed functions' state work.

Allowed lateness: a window fires once, when the watermark passes its end.
The watermark is held back by the out-of-orderness *and* the allowed lateness, so a
window waits for its late readings and fires once, final (no early result followed by
corrections); a reading behind a window that fired is ``late``: delivered, not in the
aggregate.
"""

from __future__ import annotations

from pathlib import Path

from pyflink.common import Configuration, Duration, WatermarkStrategy
from pyflink.common.serialization import SimpleStringSchema
from pyflink.datastream import DataStream, StreamExecutionEnvironment
from pyflink.datastream.connectors.kafka import KafkaOffsetsInitializer, KafkaSource
from pyflink.java_gateway import get_gateway
from pyflink.table import Schema, StatementSet, StreamTableEnvironment

from aircast.records import AGGREGATE_WINDOW_S, DUPLICATE, LATE
from aircast.settings import Settings
from flink import functions as F
from flink.config import kafka_properties, lane_jar, sink_ddl
from flink.transforms import aggregate_layout, letter_json_sql, measure_table

PACKAGE_DIR = Path(__file__).resolve().parent
WINDOW_MS = AGGREGATE_WINDOW_S * 1000


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
    """Watermarks made in the source, per raw partition, from the message timestamps (the
    measurement time the ingest gives each record; a Kafka source's default), the least
    of them going on. Made after the split instead (one stream, in arrival order), a
    backlog read a fetch of hours of one partition at a time made the other partitions'
    readings late: 12 % of bench-flink's."""
    f = settings.flink
    hold_back = f.watermark_out_of_orderness_s + f.allowed_lateness_s
    return WatermarkStrategy.for_bounded_out_of_orderness(
        Duration.of_seconds(hold_back)
    ).with_idleness(Duration.of_seconds(f.idle_partition_s))


def _fast_lane(
    env: StreamExecutionEnvironment, raw: DataStream, jar: Path
) -> tuple[DataStream, DataStream]:
    """The JVM fast lane (``aircast.flink.FastSplit``, flink/java): a clean record's
    readings as the split's rows, made in the JVM; every other message on the second
    stream, for the Python split. Through PyFlink's Python operator a record cost ~47 µs
    of the JVM's thread (the split and the hand-over both ways; a prototype reading a
    file); the lane takes nearly every real record (tests/test_flink_fast_split.py
    checks its rows against the domain's)."""
    if not jar.is_file():
        raise FileNotFoundError(f"{jar}: the job's JVM lane is not built (`make setup` builds it)")
    env.add_jars(jar.resolve().as_uri())
    jvm = get_gateway().jvm
    # A Java function on the DataStream: PyFlink has no wrapper for one, so the Java
    # stream under PyFlink's is used (and wrapped back); the output type is the Python
    # lane's, so the two lanes union.
    lane = jvm.aircast.flink.FastSplit(measure_table())
    j_lane = (
        raw._j_data_stream.process(lane, F.READING_TYPE.get_java_type_info())
        .name("fast-split")
        .uid("fast-split")
    )
    return DataStream(j_lane), DataStream(j_lane.getSideOutput(jvm.aircast.flink.FastSplit.SLOW))


def _first_seen(readings: DataStream, settings: Settings) -> tuple[DataStream, DataStream]:
    """The dedupe (``aircast.flink.FirstSeen``, flink/java): the readings seen for the
    first time, and those seen again within ``flink.dedupe_ttl_s``. It was a Flink SQL
    count over (reading key, event time) with a state TTL: a state entry per reading and
    its TTL bookkeeping cost about a quarter of the job's time (bench-flink: 28-29k/s
    with it, 36-42k without); the JVM function keeps one entry per series."""
    jvm = get_gateway().jvm
    row_type = F.READING_TYPE.get_java_type_info()
    dedupe = jvm.aircast.flink.FirstSeen(settings.flink.dedupe_ttl_s * 1000, row_type)
    j_first = (
        readings._j_data_stream.keyBy(jvm.aircast.flink.FirstSeen.ByReadingKey())
        .process(dedupe, row_type)
        .name("first-seen")
        .uid("first-seen")
    )
    return DataStream(j_first), DataStream(j_first.getSideOutput(dedupe.repeats()))


def _windows(firsts: DataStream) -> DataStream:
    """The aggregates, ``(key, Aggregate JSON)`` (``aircast.flink.Windows``, flink/java),
    on FirstSeen's keys: the stream is marked keyed as it is, so the function is chained
    to FirstSeen with no hand-over between them. It was a Flink SQL window aggregate:
    bench-flink's job ran 52-58k readings/s without it, 35-37k with it."""
    jvm = get_gateway().jvm
    marker, figures = aggregate_layout()
    keyed = jvm.org.apache.flink.streaming.api.datastream.DataStreamUtils.reinterpretAsKeyedStream(
        firsts._j_data_stream, jvm.aircast.flink.FirstSeen.ByReadingKey()
    )
    j_aggregates = (
        keyed.process(
            jvm.aircast.flink.Windows(WINDOW_MS, marker, " ".join(figures)),
            F.KV_TYPE.get_java_type_info(),
        )
        .name("windows")
        .uid("windows")
    )
    return DataStream(j_aggregates)


def _readings_schema() -> Schema:
    # The physical columns are the split's row (ts, k, v, val); the event time is the
    # reading's own, the record's: what the message timestamp carried to the watermark.
    return (
        Schema.new_builder()
        .column_by_expression("rowtime", "TO_TIMESTAMP_LTZ(ts, 3)")
        .watermark("rowtime", "SOURCE_WATERMARK()")
        .build()
    )


# ``firsts``: every reading's first sighting; ``repeats``: the sightings again.
READINGS = "INSERT INTO readings_sink SELECT k, v FROM firsts"

AGGREGATES = "INSERT INTO aggregates_sink SELECT k, v FROM aggregates"


# A window fires when the watermark reaches its last millisecond; a reading for it
# seen after that is left out by Windows: ``late``. Windows applies the same rule to
# the same stream (FirstSeen's output and its watermark); at parallelism 1 the two
# agree exactly (tests/test_flink_job.py), above it they were not compared.
def _letters(settings: Settings) -> str:
    lateness_s = settings.flink.allowed_lateness_s
    dup = letter_json_sql(DUPLICATE, "k", "v", "ts", lateness_s)
    late = letter_json_sql(LATE, "k", "v", "ts", lateness_s)
    return f"""
INSERT INTO dead_letter_sink
SELECT k, v FROM split_letters
UNION ALL
SELECT k, {dup} FROM repeats
UNION ALL
SELECT k, {late} FROM firsts
WHERE CURRENT_WATERMARK(rowtime) IS NOT NULL
  AND TO_TIMESTAMP_LTZ(ts - MOD(ts, {WINDOW_MS}) + {WINDOW_MS} - 1, 3)
      <= CURRENT_WATERMARK(rowtime)
"""


def attach(env: StreamExecutionEnvironment, settings: Settings) -> None:
    """Add the whole topology (source, split, SQL, the three keyed Kafka sinks) to ``env``."""
    statements(env, settings).attach_as_datastream()


def statements(env: StreamExecutionEnvironment, settings: Settings) -> StatementSet:
    """The source, split and dedupe on ``env``, and the SQL statements that read them: one
    set, planned together (``explain()`` shows the plan; ``python -m flink.job --explain``
    prints it)."""
    # A stable uid: a restart maps the checkpointed source offsets back onto it.
    raw = env.from_source(_source(settings), _watermarks(settings), "raw-topic").uid(
        "raw-topic-source"
    )
    fast, slow = _fast_lane(env, raw, lane_jar(settings))
    split = slow.process(F.SplitMessage(settings.kafka.raw_topic), output_type=F.READING_TYPE).name(
        "split-validate"
    )

    firsts, repeats = _first_seen(fast.union(split), settings)

    t_env = StreamTableEnvironment.create(env)
    # Letters write times as the feed does. (No state TTL: the SQL keeps only window
    # state, which a window's firing frees; the dedupe's retention is FirstSeen's.)
    t_env.get_config().set("table.local-time-zone", "UTC")
    # The statements below read ``firsts`` through one view: the planner's sub-plan
    # reuse (on by default) converts its rows once for all of them.
    t_env.create_temporary_view("firsts", t_env.from_data_stream(firsts, _readings_schema()))
    t_env.create_temporary_view("repeats", t_env.from_data_stream(repeats, _readings_schema()))
    t_env.create_temporary_view("aggregates", t_env.from_data_stream(_windows(firsts)))
    t_env.create_temporary_view(
        "split_letters", t_env.from_data_stream(split.get_side_output(F.DEAD_LETTERS))
    )
    for table, topic, name in (
        ("readings_sink", settings.kafka.readings_topic, "readings"),
        ("aggregates_sink", settings.kafka.aggregates_topic, "aggregates"),
        ("dead_letter_sink", settings.kafka.dead_letter_topic, "dead-letter"),
    ):
        t_env.execute_sql(sink_ddl(table, topic, settings, name))
    statement_set = t_env.create_statement_set()
    for statement in (READINGS, AGGREGATES, _letters(settings)):
        statement_set.add_insert_sql(statement)
    return statement_set
