"""The GPU lock on its own: shared holders overlap, a writer runs alone and is preferred."""

import threading
import time

import pytest

from nas.train.gpulock import GpuLock


def test_shared_holders_overlap_and_a_writer_runs_alone():
    lock, inside, most, seen = GpuLock(), [0], [0], threading.Lock()
    both = threading.Barrier(2, timeout=5)

    def reader():
        with lock.shared():
            with seen:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            both.wait()  # both readers are inside at once, or this times out
            with seen:
                inside[0] -= 1

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 2
    with lock.exclusive():
        assert lock.held() == "exclusive" and lock.readers() == 0
    assert lock.held() is None


def test_a_waiting_writer_goes_before_later_readers_and_waits_only_for_earlier_ones():
    """A reader holds the lock for 0.4 s (an epoch); a writer asks at 0.1 s, a second reader at
    0.2 s: the writer gets in when the first reader leaves, and the second reader only after it."""
    lock, events, log = GpuLock(), [], threading.Lock()
    t0 = time.perf_counter()

    def note(what):
        with log:
            events.append((what, time.perf_counter() - t0))

    def first_reader():
        with lock.shared():
            note("reader 1 in")
            time.sleep(0.4)
            note("reader 1 out")

    def writer():
        time.sleep(0.1)
        note("writer asks")
        with lock.exclusive():
            note("writer in")
            time.sleep(0.1)
            note("writer out")

    def second_reader():
        time.sleep(0.2)
        with lock.shared():
            note("reader 2 in")

    threads = [threading.Thread(target=f) for f in (first_reader, writer, second_reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    order = [what for what, _ in events]
    assert order == ["reader 1 in", "writer asks", "reader 1 out", "writer in", "writer out", "reader 2 in"], events
    at = dict(events)
    assert at["writer in"] - at["writer asks"] < 0.45  # it waited for the reader already inside, no longer


def test_the_lock_is_not_reentrant():
    lock = GpuLock()
    with lock.shared():
        with pytest.raises(RuntimeError, match="not reentrant"):
            with lock.exclusive():
                pass
        assert lock.held() == "shared"
    with lock.exclusive():
        with pytest.raises(RuntimeError, match="not reentrant"):
            with lock.shared():
                pass
    assert lock.held() is None and lock.readers() == 0


def test_alone_first_runs_the_first_call_exclusive_then_shared():
    lock, modes = GpuLock(), []
    step = lock.alone_first(lambda: modes.append(lock.held()))
    for _ in range(3):
        step()
    assert modes == ["exclusive", "shared", "shared"] and lock.held() is None
