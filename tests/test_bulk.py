"""aircast.bulk: the collector is off inside, back on after (also after an error), and
left off if it was off."""

from __future__ import annotations

import gc

import pytest

from aircast.bulk import collector_paused


def test_the_collector_is_paused_inside_and_resumes_after() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(ValueError), collector_paused():
        raise ValueError("bad shard")
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
