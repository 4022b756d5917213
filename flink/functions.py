"""The job's Flink functions: thin shells that call :mod:`flink.transforms`.

Two Python stages, one shuffle (see :mod:`flink.topology`):

* :class:`SplitMessage` — raw message → per valid value ``((key, carried), event ms)``,
  the shape Flink's own timestamp assigner and key-by read without another Python
  operator; rejections leave through the dead-letter side output;
* :class:`ReadingsAndWindows` — keyed by ``sensor:measure``: drops duplicates, emits the
  reading, keeps the key's 10-minute windows and fires them on event-time timers.

Everything leaving for Kafka is a ``Row(k, v)`` of strings, ready for the keyed sinks;
what travels between the stages is a tuple of plain values (see :func:`T.carried`).
Nothing here logs or allocates per element beyond the records themselves.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from pyflink.common import Row, Types
from pyflink.common.time import Time
from pyflink.datastream import KeyedProcessFunction, OutputTag, ProcessFunction, RuntimeContext
from pyflink.datastream.state import StateTtlConfig, ValueStateDescriptor

from aircast.records import DeadLetter, Reading
from flink import transforms as T

KV_TYPE = Types.ROW_NAMED(["k", "v"], [Types.STRING(), Types.STRING()])
# (key, carried reading): the key-by of :mod:`flink.topology` reads field 0 in Java.
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
        for outcome in T.split_message(value, int(time.time()), self._topic):
            if isinstance(outcome, Reading):
                yield Row(outcome.key, T.carried(outcome)), T.event_time_ms(outcome)
            else:
                yield _letter(outcome)


class ReadingsAndWindows(KeyedProcessFunction):  # type: ignore[misc]
    """Keyed by ``sensor:measure``: duplicates out, readings on, 10-minute aggregates.

    Two value states per key, both read from PyFlink's state cache in the Python worker
    (no round trip to the JVM per reading): the recent timestamps (with a TTL, so
    sensors that went silent are forgotten) and the open windows, which the key's
    event-time timers fire and drop (see the window rules in :mod:`flink.transforms`).
    Main output: readings rows; side outputs: aggregates and dead letters.

    The TTL's visibility is ``ReturnExpiredIfNotCleanedUp``: with ``NeverReturnExpired``
    PyFlink turns its state cache off for *every* state of the worker, and each reading
    then costs four synchronous round trips to the JVM (measured: 12x slower job). The
    TTL is there to free silent sensors' memory; which timestamps count as recent is
    :func:`T.is_duplicate`'s event-time horizon, so a timestamp may only be recognised
    somewhat longer than ``dedupe_ttl_s``, never shorter.
    """

    def __init__(self, dedupe_ttl_s: int, allowed_lateness_s: int) -> None:
        self._ttl_s = dedupe_ttl_s
        self._lateness_s = allowed_lateness_s
        self._lateness_ms = allowed_lateness_s * 1000
        self._seen: Any = None
        self._windows: Any = None

    def open(self, runtime_context: RuntimeContext) -> None:
        seen = ValueStateDescriptor("seen-timestamps", Types.PICKLED_BYTE_ARRAY())
        seen.enable_time_to_live(
            StateTtlConfig.new_builder(Time.seconds(self._ttl_s))
            .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
            .set_state_visibility(StateTtlConfig.StateVisibility.ReturnExpiredIfNotCleanedUp)
            .build()
        )
        self._seen = runtime_context.get_state(seen)
        windows = ValueStateDescriptor("open-windows", Types.PICKLED_BYTE_ARRAY())
        self._windows = runtime_context.get_state(windows)

    def process_element(self, value: T.Carried, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        text, fields = value
        seen: set[int] | None = self._seen.value()
        if seen is None:
            seen = set()
        if T.is_duplicate(seen, T.timestamp_of(fields), self._ttl_s):
            yield _letter(T.duplicate_letter(T.reading_of(fields), int(time.time())))
            return
        self._seen.update(seen)
        yield Row(k=ctx.get_current_key(), v=text)

        timers = ctx.timer_service()
        watermark = timers.current_watermark()
        windows: T.Windows | None = self._windows.value()
        if windows is None:
            windows = {}
        placed = T.add_to_window(windows, fields, watermark, self._lateness_ms)
        if placed is None:
            late = T.late_letter(T.reading_of(fields), int(time.time()), self._lateness_s)
            yield _letter(late)
            return
        self._windows.update(windows)
        start, new = placed
        if T.fires_now(start, watermark):
            yield AGGREGATES, kv(T.aggregate_row(T.aggregate_of(windows, start)))
        elif new:
            timers.register_event_time_timer(T.fire_time_ms(start))
        if new:
            timers.register_event_time_timer(T.cleanup_time_ms(start, self._lateness_ms))

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        windows: T.Windows | None = self._windows.value()
        if not windows:
            return
        for aggregate in T.on_timer(windows, timestamp, self._lateness_ms):
            yield AGGREGATES, kv(T.aggregate_row(aggregate))
        if windows:
            self._windows.update(windows)
        else:
            self._windows.clear()
