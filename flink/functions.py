"""The job's Python functions: thin shells that call :mod:`flink.transforms`.

* :class:`SplitMessage` — raw message → one row per record: its event time (ms) and its
  valid readings' keys, JSON and values, the shape the SQL of :mod:`flink.topology`
  unnests; rejections leave through the dead-letter side output;

Everything leaving for Kafka is a ``(k, v)`` pair of strings, ready for the keyed
sinks. Nothing here logs or allocates per element beyond the records themselves.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream import OutputTag, ProcessFunction

from aircast.records import DeadLetter, Reading
from flink import transforms as T

KV_TYPE = Types.ROW_NAMED(["k", "v"], [Types.STRING(), Types.STRING()])
# One record's valid readings as parallel arrays (key, Reading JSON, value) and their
# positions (1-based) for the SQL to unnest. Not an array of rows: PyFlink's Java-side
# converter reuses one row object for every element (all came out as the last one).
RECORD_TYPE = Types.ROW_NAMED(
    ["ts", "ks", "vs", "vals", "idx"],
    [
        Types.LONG(),
        Types.BASIC_ARRAY(Types.STRING()),
        Types.BASIC_ARRAY(Types.STRING()),
        Types.BASIC_ARRAY(Types.DOUBLE()),
        Types.BASIC_ARRAY(Types.INT()),
    ],
)
DEAD_LETTERS = OutputTag("dead-letters", KV_TYPE)


def _letter(letter: DeadLetter) -> Row:
    return DEAD_LETTERS, Row(*T.letter_row(letter))


class SplitMessage(ProcessFunction):  # type: ignore[misc]
    """Raw message → its readings with their event time; rejections to the side output."""

    def __init__(self, topic: str) -> None:
        self._topic = topic

    def process_element(self, value: str, ctx: ProcessFunction.Context) -> Iterator[Any]:
        ks: list[str] = []
        vs: list[str] = []
        vals: list[float] = []
        event_ms = 0
        for outcome in T.split_message(value, int(time.time()), self._topic):
            if isinstance(outcome, Reading):
                # A record is one sensor at one time: its readings share the event time.
                event_ms = T.event_time_ms(outcome)
                k, v, val = T.reading_row(outcome)
                ks.append(k)
                vs.append(v)
                vals.append(val)
            else:
                yield _letter(outcome)
        if ks:
            yield Row(event_ms, ks, vs, vals, list(range(1, len(ks) + 1)))
