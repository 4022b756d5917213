"""The job's Flink functions: thin shells that call :mod:`flink.transforms`.

Two Python stages, one shuffle (see :mod:`flink.topology`):

* :class:`SplitMessage` — raw message → its valid values together,
  ``((sensor id, carried record), event ms)``, the shape Flink's own timestamp assigner
  and key-by read without another Python operator; rejections leave through the
  dead-letter side output;
* :class:`SensorReadings` — keyed by sensor id: drops duplicates, emits the readings,
  keeps the sensor's 10-minute windows and fires them on event-time timers.

Everything leaving for Kafka is a ``Row(k, v)`` of strings, ready for the keyed sinks;
what travels between the stages is a tuple of plain values (see :func:`T.carried_record`).
Nothing here logs or allocates per element beyond the records themselves.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from pyflink.common import Row, Types
from pyflink.common.time import Time
from pyflink.datastream import KeyedProcessFunction, OutputTag, ProcessFunction, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor, StateTtlConfig

from aircast.records import DeadLetter, Reading
from flink import transforms as T

KV_TYPE = Types.ROW_NAMED(["k", "v"], [Types.STRING(), Types.STRING()])
# (sensor id, carried record): the key-by of :mod:`flink.topology` reads field 0 in Java.
KEYED_TYPE = Types.ROW([Types.STRING(), Types.PICKLED_BYTE_ARRAY()])
# What Flink's Python timestamp assigner takes: (element, event time in ms).
TIMESTAMPED_TYPE = Types.TUPLE([KEYED_TYPE, Types.LONG()])
DEAD_LETTERS = OutputTag("dead-letters", KV_TYPE)
AGGREGATES = OutputTag("aggregates", KV_TYPE)


def kv(pair: tuple[str | None, str]) -> Row:
    return Row(k=pair[0], v=pair[1])


def _letter(letter: DeadLetter) -> tuple[OutputTag, Row]:
    return DEAD_LETTERS, kv(T.letter_row(letter))


class SplitMessage(ProcessFunction):  # type: ignore[misc]
    """Raw message → readings with their event time; rejections to the side output."""

    def __init__(self, topic: str) -> None:
        self._topic = topic

    def process_element(self, value: str, ctx: ProcessFunction.Context) -> Iterator[Any]:
        readings: list[Reading] = []
        for outcome in T.split_message(value, int(time.time()), self._topic):
            if isinstance(outcome, Reading):
                readings.append(outcome)
            else:
                yield _letter(outcome)
        if readings:
            key, record, event_ms = T.carried_record(readings)
            yield Row(key, record), event_ms


class SensorReadings(KeyedProcessFunction):  # type: ignore[misc]
    """Keyed by sensor id: duplicates out, readings on, 10-minute aggregates.

    One call per record (all its values at once) and one map state per sensor, window
    start → (times taken, the window's readings), read and written once per record, so
    a record costs the same whatever the sensor's history (see :func:`T.take_record`).
    Entries carry a TTL of ``dedupe_ttl_s``: it is the dedupe memory, and it frees what
    a sensor that went silent left behind. Event-time timers fire and close the windows
    (the window rules are in :mod:`flink.transforms`). Main output: readings rows; side
    outputs: aggregates and dead letters.

    The TTL's visibility is ``ReturnExpiredIfNotCleanedUp``: with ``NeverReturnExpired``
    PyFlink turns its state cache off for *every* state of the worker (measured: 12x
    slower job). A timestamp may so be recognised somewhat longer than ``dedupe_ttl_s``,
    never shorter.
    """

    def __init__(self, dedupe_ttl_s: int, allowed_lateness_s: int) -> None:
        self._ttl_s = dedupe_ttl_s
        self._lateness_ms = allowed_lateness_s * 1000
        self._windows: Any = None

    def open(self, runtime_context: RuntimeContext) -> None:
        ttl = (
            StateTtlConfig.new_builder(Time.seconds(self._ttl_s))
            .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
            .set_state_visibility(StateTtlConfig.StateVisibility.ReturnExpiredIfNotCleanedUp)
            .build()
        )
        windows = MapStateDescriptor("windows", Types.LONG(), Types.PICKLED_BYTE_ARRAY())
        windows.enable_time_to_live(ttl)
        self._windows = runtime_context.get_map_state(windows)

    def process_element(
        self, value: T.CarriedRecord, ctx: KeyedProcessFunction.Context
    ) -> Iterator[Any]:
        timers = ctx.timer_service()
        out, register = T.take_record(
            self._windows, value, timers.current_watermark(), self._lateness_ms, int(time.time())
        )
        for timer in register:
            timers.register_event_time_timer(timer)
        for kind, row in out:
            yield kv(row) if kind == T.READING else (_TAGS[kind], kv(row))

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        for _, row in T.on_timer(self._windows, timestamp, self._lateness_ms):
            yield AGGREGATES, kv(row)


_TAGS = {T.LETTER: DEAD_LETTERS, T.AGGREGATE: AGGREGATES}
