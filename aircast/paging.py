"""Pages of a listing: ``limit`` items from ``offset``, asked for as ``page`` (1-based)
or ``offset``, with the total count answered beside them (as the OpenAQ API does).

A bad combination raises :class:`ValueError` whose message is the reason (a 422)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page:
    limit: int
    offset: int

    @property
    def number(self) -> int:
        """The 1-based page this offset falls in (exact when offset is a multiple of
        limit, as it is for pages asked for by number)."""
        return self.offset // self.limit + 1

    def slice(self, items: Sequence[T]) -> Sequence[T]:
        return items[self.offset : self.offset + self.limit]


def page(
    limit: int | None, page_number: int | None, offset: int | None, default: int, maximum: int
) -> Page:
    """The page a request asks for; ``limit`` defaults to ``default`` and may not
    exceed ``maximum``; ``page`` and ``offset`` exclude each other."""
    size = default if limit is None else limit
    if not 1 <= size <= maximum:
        raise ValueError(f"'limit' must be between 1 and {maximum}, got {size}")
    if page_number is not None and offset is not None:
        raise ValueError("give either 'page' or 'offset', not both")
    if page_number is not None:
        if page_number < 1:
            raise ValueError(f"'page' counts from 1, got {page_number}")
        return Page(size, (page_number - 1) * size)
    if offset is not None and offset < 0:
        raise ValueError(f"'offset' must be 0 or more, got {offset}")
    return Page(size, offset or 0)
