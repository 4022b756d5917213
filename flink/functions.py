"""The job's Python functions: thin shells that call :mod:`flink.transforms`.

* :class:`SplitMessage` — raw message → one row per valid value: event time (ms),
  reading key, Reading JSON and value, what the SQL of :mod:`flink.topology` takes;
  rejections leave through the dead-letter side output.

Everything leaving for Kafka is a ``(k, v)`` pair of strings, ready for the keyed
sinks. Nothing here logs or allocates per element beyond the records themselves.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream import OutputTag, ProcessFunction

from aircast.records import DeadLetter
from flink import transforms as T

KV_TYPE = Types.ROW_NAMED(["k", "v"], [Types.STRING(), Types.STRING()])
READING_TYPE = Types.ROW_NAMED(
    ["ts", "k", "v", "val"], [Types.LONG(), Types.STRING(), Types.STRING(), Types.DOUBLE()]
)
DEAD_LETTERS = OutputTag("dead-letters", KV_TYPE)


def _letter(letter: DeadLetter) -> tuple[OutputTag, Row]:
    return DEAD_LETTERS, Row(*T.letter_row(letter))


# PyFlink ships no types, so ProcessFunction is Any to mypy (disallow_subclassing_any).
class SplitMessage(ProcessFunction):  # type: ignore[misc]
    """Raw message → its readings with their event time; rejections to the side output."""

    def __init__(self, topic: str) -> None:
        self._topic = topic

    def process_element(self, value: str, ctx: ProcessFunction.Context) -> Iterator[Any]:
        for outcome in T.split_message(value, int(time.time()), self._topic):
            if isinstance(outcome, DeadLetter):
                yield _letter(outcome)
            else:
                yield Row(*T.job_row(outcome))
