"""Who made a leaked socket, said by the test that finds it.

A socket left open and dropped inside a reference cycle is freed only when the cyclic
garbage collector next runs, which may be in any later test. Python then warns
(``ResourceWarning: unclosed <socket.socket ...>``, an error in this suite) naming the
socket's addresses, not its maker. So every socket this process opens is noted with the
test that was running and the frames that opened it, and forgotten when it is closed; a
socket found unclosed is reported with that note. conftest also runs the collector at the
end of each file, so a leak fails the file that made it, not whichever file comes next.
"""

from __future__ import annotations

import os
import socket
import sys
import traceback
from types import SimpleNamespace
from typing import Any

FRAMES = 20
PYTEST_ITSELF = ("/_pytest/", "/pluggy/")  # frames left out of a report

_made: dict[int, tuple[str, traceback.StackSummary]] = {}
# The hook found when installing (pytest's, which turns the warning into a test error).
found_by: list[Any] = []


def install() -> None:
    """Note sockets as they are opened, forget them as they are closed, and name the
    maker of any found unclosed; once per process, before the first test."""
    if getattr(socket.socket, "_aircast_noted", False):
        return
    init, close, detach = socket.socket.__init__, socket.socket.close, socket.socket.detach

    def noting_init(self: socket.socket, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        frames = traceback.StackSummary.extract(
            traceback.walk_stack(sys._getframe(1)), limit=FRAMES, lookup_lines=False
        )
        # pytest's own note of the test phase running ("tests/x.py::test_y (call)").
        _made[id(self)] = (os.environ.get("PYTEST_CURRENT_TEST", "no test"), frames)

    def forgetting_close(self: socket.socket) -> None:
        _made.pop(id(self), None)
        close(self)

    def forgetting_detach(self: socket.socket) -> int:
        _made.pop(id(self), None)
        return detach(self)

    socket.socket.__init__ = noting_init  # type: ignore[method-assign]
    socket.socket.close = forgetting_close  # type: ignore[method-assign,assignment]
    socket.socket.detach = forgetting_detach  # type: ignore[method-assign,assignment]
    socket.socket._aircast_noted = True  # type: ignore[attr-defined]

    found_by.append(sys.unraisablehook)
    sys.unraisablehook = naming_the_maker


def maker(sock: socket.socket) -> str | None:
    """The test and frames that opened ``sock``, while it is open; else None."""
    note = _made.get(id(sock))
    if note is None:
        return None
    test, frames = note
    ours = traceback.StackSummary.from_list(
        [f for f in frames if not any(part in f.filename for part in PYTEST_ITSELF)]
    )
    where = "".join(reversed(ours.format())).rstrip()
    return f"a socket opened during {test}, innermost frame last:\n{where}"


def naming_the_maker(unraisable: Any) -> None:
    """The unraisable hook: a socket found unclosed is reported with its maker."""
    made = maker(unraisable.object) if isinstance(unraisable.object, socket.socket) else None
    if made is not None:
        _made.pop(id(unraisable.object), None)
        unraisable = SimpleNamespace(
            exc_type=unraisable.exc_type,
            exc_value=unraisable.exc_value,
            exc_traceback=unraisable.exc_traceback,
            object=unraisable.object,
            err_msg=f"{unraisable.err_msg or 'Exception ignored in'} ({made}\n)",
        )
    found_by[-1](unraisable)
