"""Ctrl-C is never lost, and never cuts a trial's bookkeeping in half (nas.search.interrupt)."""

import gc
import signal
import sys
import weakref

import pytest

from nas.search import interrupt


class Thing:
    pass


@pytest.fixture(autouse=True)
def python_handles_ctrl_c():
    """The tests start from Python's own SIGINT handler. A shell that starts the suite in the
    background without job control (`pytest &` in a script) has it ignored (SIG_IGN), and Python
    then keeps it ignored: these tests failed under `nohup bash -c 'pytest ... &'`."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def ctrl_c_inside_a_weakref_callback() -> None:
    """What torch's lazy imports let happen mid-training: the signal lands in a callback that the
    garbage collector runs, where Python can only print the KeyboardInterrupt and drop it."""
    thing = Thing()
    ref = weakref.ref(thing, lambda r: signal.raise_signal(signal.SIGINT))
    del thing
    gc.collect()
    assert ref() is None


def test_a_ctrl_c_python_dropped_is_raised_again_and_not_printed(monkeypatch):
    printed = []
    monkeypatch.setattr(sys, "unraisablehook", printed.append)  # where "Exception ignored in ..." comes from
    with interrupt.catching():
        ctrl_c_inside_a_weakref_callback()  # returns: Python dropped it
        assert interrupt.happened()
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
    assert printed == []
    assert not interrupt.happened()
    interrupt.check()  # outside `catching` nothing is remembered


def test_outside_catching_python_drops_it_for_good(monkeypatch):
    printed = []
    monkeypatch.setattr(sys, "unraisablehook", printed.append)
    ctrl_c_inside_a_weakref_callback()
    interrupt.check()  # nothing to raise: the reason `catching` exists
    assert [type(u.exc_value) for u in printed] == [KeyboardInterrupt]


def test_held_finishes_the_block_then_raises():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupt.held():
            signal.raise_signal(signal.SIGINT)
            done.append("recorded")
    assert done == ["recorded"]
    with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C is a way out at once
        with interrupt.held():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            done.append("not reached")
    assert done == ["recorded"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
