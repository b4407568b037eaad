"""The commands of README.md and docs/*.md as a reader runs them: every block marked runnable (a line
`<!-- runnable -->` right before a fenced block), each by itself, line after line, from a new
temporary folder with relative paths (storage, data, --out), made small by flags appended to each
command (the last value of a flag wins). A block that cannot run here (a GPU, PostgreSQL on many
machines, hours of training) is left unmarked; a `nas` block left unmarked must be on a page of
UNMARKED, with the reason."""

import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from conftest import ROOT

SMALL = {  # appended to each command: a few hundred images, one epoch, a target every trial reaches
    "search": [
        "--max-epochs",
        "1",
        "--train-size",
        "300",
        "--val-size",
        "200",
        "--target-accuracy",
        "0.05",
        "--trials",
        "3",
        "--device",
        "cpu",
    ],
    "train": ["--epochs", "1", "--train-size", "300", "--val-size", "200", "--device", "cpu"],
    "export": ["--epochs", "1", "--train-size", "300", "--device", "cpu"],
    "worker": ["--device", "cpu"],
}
SCRIPTS = {  # the benchmarks a runnable block may run, and what makes each small
    "benchmarks/own_data.py": ["--train", "600", "--test", "200"],
    "benchmarks/deploy.py": ["--repeats", "1"],
}
SKIPPED = {  # lines a runnable block may hold that cannot run from a temporary folder, and why
    "pip install -e .[dev]": "the test runs inside this install",
    "python3 -m pytest": "this test is part of it",
}
INVERTED = r"  \(dark on light: inverted to the training images' light on dark\)"
EXPECT = {  # what some lines must print (a regex for all of it) or leave behind (a file, and what it holds)
    "nas predict runs/quick/model.pt docs/digit.png": r"docs/digit\.png: \d  \(\d+\.\d %\)" + INVERTED + r"\n",
    "nas predict runs/winner/model.pt docs/digit.png": r"docs/digit\.png: .*\n",
    "nas summary data/seed_rgb.toml": r"(?s).*Total params: 9,346.*",
    "nas space show --dataset data/rgb.npz": r"(?s).*\(input 3x32x32, 10 classes\).*",
    # a class name, and not inverted
    "nas predict runs/rgb/model.int8.onnx data/digit_rgb.png": r"data/digit_rgb\.png: \d \w+  \(\d+\.\d %\)\n",
    "nas export --study rgb --out runs/rgb": ("runs/rgb/README.md", ["| 7 | seven |", "[N, 32, 32, 3]"]),
}
UNMARKED = {  # pages whose `nas` blocks are not run here, and why
    "docs/gpu.md": "they need a CUDA GPU",
    "docs/many-machines.md": "they need a PostgreSQL server and several machines",
}
MARK = "<!-- runnable -->"
SHELL = ("sh", "bash", "shell", "console")  # the fences whose lines are commands
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def fenced_blocks(page) -> list[tuple[int, bool, list[list[str]]]]:
    r"""Every fenced block of a page: its line number, whether MARK stands right before it, and, for
    a shell block (```sh), its command lines split as a shell would (`\` continuations joined, #
    comments dropped)."""
    lines = page.read_text().splitlines()
    found = []
    i = 0
    while i < len(lines):
        if not lines[i].startswith("```"):
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        shell = lines[i][3:].strip() in SHELL
        commands, joined = [], ""
        for line in lines[i + 1 : end] if shell else []:
            joined += line.strip()
            if joined.endswith("\\"):
                joined = joined[:-1] + " "
            elif joined:
                if split := shlex.split(joined, comments=True):
                    commands.append(split)
                joined = ""
        found.append((i + 1, i > 0 and lines[i - 1].strip() == MARK, commands))
        i = end + 1
    return found


RUNNABLE = [(page, n, commands) for page in PAGES for n, marked, commands in fenced_blocks(page) if marked]
IDS = [f"{page.relative_to(ROOT)}:{n}" for page, n, _ in RUNNABLE]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], cwd, env) -> str:
    if args[1] == "dashboard":
        return run_dashboard(args, cwd, env)
    r = subprocess.run(
        [sys.executable, "-m", *args, *SMALL.get(args[1], [])],
        check=False,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-2000:])
    return r.stdout


PATIENCE = 180  # seconds for each wait on the dashboard; each wait ends as soon as its condition holds


def run_dashboard(args: list[str], cwd, env) -> str:
    """`nas dashboard` serves until Ctrl-C: wait for its URL line, then for that URL to answer,
    stop it with SIGINT as a user would, and wait for it to exit (130, no traceback). Each wait
    is on the condition itself, with a deadline far beyond what a loaded machine needs; a Ctrl-C
    the server swallows (it served on after a traceback) fails here, with its output."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *args, "--port", str(free_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()  # stdout's lines as they come, then "" at its end
    err: list[str] = []

    def read_stdout() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put("")

    readers = [
        threading.Thread(target=read_stdout, daemon=True),
        threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True),
    ]
    for t in readers:  # both pipes drained all along, so the server never blocks on a full one
        t.start()
    shown: list[str] = []

    def output() -> str:
        """Everything it printed, once it has exited."""
        for t in readers:
            t.join(timeout=PATIENCE)
        while not lines.empty():
            shown.append(lines.get())
        return f"stdout:\n{''.join(shown)}\nstderr:\n{''.join(err)[-3000:]}"

    def fail(why: str) -> None:
        proc.kill()
        proc.wait()
        pytest.fail(f"{' '.join(args)}: {why}\n{output()}")

    deadline = time.monotonic() + PATIENCE
    while "Ctrl-C to stop" not in "".join(shown):
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            fail(f"printed no 'Ctrl-C to stop' line in {PATIENCE} s")
        if not line:
            proc.wait()
            fail(f"exited ({proc.returncode}) before serving")
        shown.append(line)
    url = re.search(r"http://\S+", "".join(shown))[0].replace("/dashboard/studies/", "/api/studies/")
    deadline = time.monotonic() + PATIENCE
    while True:  # the server starts listening just after it printed its URL
        try:
            with urllib.request.urlopen(url, timeout=max(1.0, deadline - time.monotonic())) as r:
                assert r.status == 200
            break
        except OSError as e:
            if proc.poll() is not None:
                fail(f"exited ({proc.returncode}) before {url} answered")
            if time.monotonic() > deadline:
                fail(f"{url} did not answer in {PATIENCE} s ({e})")
            time.sleep(0.2)
    said = "".join(shown)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=PATIENCE)
    except subprocess.TimeoutExpired:
        fail(f"still serving {PATIENCE} s after Ctrl-C")
    everything = output()
    assert proc.returncode == 130 and "Traceback" not in everything, (args, proc.returncode, everything)
    return said


def test_every_runnable_block_is_one_the_test_can_run():
    """Cheap, before anything trains: the README keeps its two paths marked, every marked line is
    one this test knows how to run, every EXPECT names a marked line, and a `nas` block left
    unmarked is on a page of UNMARKED."""
    readme = [[c[1] for c in commands] for page, _, commands in RUNNABLE if page.name == "README.md"]
    assert ["search", "dashboard", "best", "export", "predict"] in readme  # the few-minute path
    user = ["summary", "train", "space", "search", "worker", "dashboard", "report", "best", "export", "predict"]
    assert user in readme  # the user's path
    lines = {" ".join(c) for _, _, commands in RUNNABLE for c in commands}
    for line in lines:
        script = line.startswith("python3 ") and line.split()[1] in SCRIPTS
        assert line.startswith("nas ") or line in SKIPPED or script, f"{line}: not a line this test can run"
    assert set(EXPECT) <= lines, set(EXPECT) - lines
    for page in PAGES:
        where = str(page.relative_to(ROOT))
        for n, marked, commands in fenced_blocks(page):
            has_nas = any(c[0] == "nas" for c in commands)
            assert marked or where in UNMARKED or not has_nas, f"{where}:{n}: nas commands, not marked {MARK}"


def run_line(args: list[str], cwd, env) -> str:
    """A `nas` line as run() runs it, or a benchmark script of SCRIPTS, small."""
    if args[0] == "nas":
        return run(args, cwd, env)
    r = subprocess.run(
        [sys.executable, str(ROOT / args[1]), *args[2:], *SCRIPTS[args[1]]],
        check=False,
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
        timeout=600,
    )
    assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-2000:])
    return r.stdout


def flag(args: list[str], name: str) -> str | None:
    """A flag's value as the command reads it (the last one wins)."""
    values = [args[i + 1] for i, a in enumerate(args[:-1]) if a == name]
    return values[-1] if values else None


@pytest.mark.parametrize(("page", "line", "commands"), RUNNABLE, ids=IDS)
def test_a_runnable_block_runs_as_written_from_a_temporary_folder(page, line, commands, tmp_path, mnist_dir):
    (tmp_path / "mnist").symlink_to(mnist_dir)  # NAS_DATA_DIR, relative like everything else
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "digit.png", tmp_path / "docs" / "digit.png")  # where the pages' paths find it
    env = {**os.environ, "NAS_DATA_DIR": "mnist", "OMP_NUM_THREADS": "1"}
    env.pop("NAS_STORAGE", None)
    env.pop("NAS_ARTIFACTS", None)
    from nas.ship import deploy
    from nas.ship.export import FILES

    # ONNX with the onnx extra
    written = sorted(FILES if not deploy.missing() else set(FILES) - {deploy.FP32, deploy.INT8})
    for args in commands:
        text = " ".join(args)
        if text in SKIPPED:
            continue
        said = run_line(args, tmp_path, env)
        expected = EXPECT.get(text)
        if isinstance(expected, str):
            assert re.fullmatch(expected, said), (text, said)
        elif expected:
            held = (tmp_path / expected[0]).read_text()
            assert all(s in held for s in expected[1]), (text, expected, held)
        if args[:2] == ["nas", "search"] and not flag(args, "--storage"):
            assert (tmp_path / "studies" / "nas.sqlite3").is_file(), text  # the default storage, in the working folder
        if args[:2] == ["nas", "export"]:
            assert sorted(p.name for p in (tmp_path / flag(args, "--out")).iterdir()) == written, text
        if args[:2] == ["nas", "report"]:
            assert (tmp_path / (flag(args, "--out") or ".") / "report.html").is_file(), text
