"""The job's Flink functions: thin shells that call :mod:`flink.transforms`.

Dead letters leave every function through a side output (PyFlink: ``yield tag, value``),
as ``Row(k, v)`` rows ready for the dead-letter sink; readings travel between operators
as :class:`~aircast.records.Reading` objects (pickled by PyFlink).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from pyflink.common import Row, Types
from pyflink.common.time import Time
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import (
    KeyedProcessFunction,
    MapFunction,
    OutputTag,
    ProcessFunction,
    ProcessWindowFunction,
    RuntimeContext,
)
from pyflink.datastream.state import StateTtlConfig, ValueStateDescriptor
from pyflink.datastream.window import TimeWindow

from aircast.records import DeadLetter, Reading
from flink import transforms as T

KV_TYPE = Types.ROW_NAMED(["k", "v"], [Types.STRING(), Types.STRING()])
DEAD_LETTERS = OutputTag("dead-letters", KV_TYPE)
LATE_READINGS = OutputTag("late-readings", Types.PICKLED_BYTE_ARRAY())


def kv(pair: tuple[str | None, str]) -> Row:
    return Row(k=pair[0], v=pair[1])


def _letter(letter: DeadLetter) -> tuple[OutputTag, Row]:
    return DEAD_LETTERS, kv(T.letter_row(letter))


class SplitMessage(ProcessFunction):  # type: ignore[misc]
    """Raw message → readings (main output) and rejections (dead-letter side output)."""

    def __init__(self, topic: str) -> None:
        self._topic = topic

    def process_element(self, value: str, ctx: ProcessFunction.Context) -> Iterator[Any]:
        for outcome in T.split_message(value, int(time.time()), self._topic):
            if isinstance(outcome, Reading):
                yield outcome
            else:
                yield _letter(outcome)


class DropDuplicates(KeyedProcessFunction):  # type: ignore[misc]
    """Keyed by ``sensor:measure``: a timestamp seen before within the TTL is a duplicate.

    One value state per key (the set of recent timestamps) rather than a map state per
    timestamp: PyFlink caches value state in the Python worker, so a reading costs no
    round trip to the JVM. The state's own TTL drops sensors that went silent.
    """

    def __init__(self, ttl_s: int) -> None:
        self._ttl_s = ttl_s
        self._seen: Any = None

    def open(self, runtime_context: RuntimeContext) -> None:
        descriptor = ValueStateDescriptor("seen-timestamps", Types.PICKLED_BYTE_ARRAY())
        ttl = (
            StateTtlConfig.new_builder(Time.seconds(self._ttl_s))
            .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
            .set_state_visibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
            .build()
        )
        descriptor.enable_time_to_live(ttl)
        self._seen = runtime_context.get_state(descriptor)

    def process_element(self, value: Reading, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        seen: set[int] = self._seen.value() or set()
        if T.is_duplicate(seen, value.timestamp, self._ttl_s):
            yield _letter(T.duplicate_letter(value, int(time.time())))
            return
        self._seen.update(seen)
        yield value


class ReadingTime(TimestampAssigner):  # type: ignore[misc]
    def extract_timestamp(self, value: Reading, record_timestamp: int) -> int:
        return T.event_time_ms(value)


class AggregateWindow(ProcessWindowFunction):  # type: ignore[misc]
    """All of one key's readings in a 10-minute window → one aggregate row.

    With allowed lateness the window fires again for each late reading: the updated
    aggregate has the same key and window start, so downstream it replaces the first.
    """

    def process(
        self,
        key: str,
        context: ProcessWindowFunction.Context[TimeWindow],
        elements: Iterable[Reading],
    ) -> Iterator[Row]:
        window: TimeWindow = context.window()
        yield kv(T.aggregate_row(T.window_aggregate(elements, window.start)))


class ReadingRow(MapFunction):  # type: ignore[misc]
    def map(self, value: Reading) -> Row:
        return kv(T.sink_row(value))


class LateRow(MapFunction):  # type: ignore[misc]
    def __init__(self, allowed_lateness_s: int) -> None:
        self._lateness_s = allowed_lateness_s

    def map(self, value: Reading) -> Row:
        return kv(T.letter_row(T.late_letter(value, int(time.time()), self._lateness_s)))


def reading_key(value: Reading) -> str:
    return value.key
