"""nas.search.processes: each worker process gets one interrupt for each Ctrl-C, however it was sent.

A script runs `run_all` over two children that count the SIGINTs they receive; the test signals the
script the way a terminal does (its whole process group), the way `kill -INT PID` does (the parent
alone: the search once printed "interrupted" and waited for workers that trained on), or kills it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import signal, sys, time
    from pathlib import Path

    from nas.search.placement import Slot
    from nas.search.processes import run_all

    def count_interrupts(out):
        got = []
        signal.signal(signal.SIGINT, lambda s, f: got.append(s))
        Path(out + ".ready").touch()
        end = time.time() + 30
        while not got and time.time() < end:
            time.sleep(0.02)
        time.sleep(1.0)  # a doubled interrupt would land here
        Path(out).write_text(str(len(got)))

    if __name__ == "__main__":
        # as a terminal starts it: a suite started in the background (`pytest &`) passes SIGINT on ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)
        folder = sys.argv[1]
        try:
            run_all(count_interrupts, [(Slot(i, None, 1, 1), (f"{folder}/w{i}",)) for i in range(2)])
        except KeyboardInterrupt:
            Path(folder, "parent").write_text("interrupted")
    """
)


def start(tmp_path: Path) -> subprocess.Popen:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"w{i}.ready").exists() for i in range(2)):
        assert proc.poll() is None and time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.05)
    return proc


def counts(tmp_path: Path) -> list[str]:
    deadline = time.monotonic() + 20
    while not all((tmp_path / f"w{i}").exists() for i in range(2)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [(tmp_path / f"w{i}").read_text() if (tmp_path / f"w{i}").exists() else "none" for i in range(2)]


@pytest.mark.parametrize("to_group", [True, False], ids=["terminal", "parent-only"])
def test_each_ctrl_c_reaches_each_worker_once(tmp_path, to_group):
    proc = start(tmp_path)
    try:
        if to_group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        assert counts(tmp_path) == ["1", "1"]
        assert proc.wait(timeout=20) == 0
        assert (tmp_path / "parent").read_text() == "interrupted"  # raised after the workers stopped
    finally:
        proc.kill()


def test_workers_stop_when_their_parent_is_killed(tmp_path):
    proc = start(tmp_path)
    proc.kill()
    assert counts(tmp_path) == ["1", "1"]
