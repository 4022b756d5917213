"""tests/leaks.py: a socket leaked in a reference cycle is reported with the test and the
line that opened it, wherever the collector finds it."""

from __future__ import annotations

import gc
import socket
import sys
from typing import Any

from tests import leaks


def test_a_socket_is_noted_while_open_and_forgotten_once_closed() -> None:
    line = sys._getframe().f_lineno + 1
    sock = socket.socket()
    made = leaks.maker(sock)
    assert made is not None
    assert "test_leaks.py::test_a_socket_is_noted_while_open_and_forgotten_once_closed (call)" in (
        made
    )
    assert f'test_leaks.py", line {line}' in made
    sock.close()
    assert leaks.maker(sock) is None


def test_a_leaked_socket_is_reported_with_the_test_and_line_that_opened_it() -> None:
    seen: list[Any] = []
    leaks.found_by.append(seen.append)  # instead of pytest's hook, which fails the test
    try:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            line = sys._getframe().f_lineno + 1
            cycle: dict[str, Any] = {"sock": socket.create_connection(listener.getsockname())}
            cycle["self"] = cycle
            del cycle
            assert seen == []  # still held by the cycle
            gc.collect()
    finally:
        leaks.found_by.pop()
    [found] = seen
    assert isinstance(found.exc_value, ResourceWarning), found.exc_value
    assert "unclosed <socket.socket" in str(found.exc_value)
    assert "test_leaks.py::test_a_leaked_socket_is_reported_with_the_test" in found.err_msg
    assert f'test_leaks.py", line {line}' in found.err_msg
