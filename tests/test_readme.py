"""The README's commands as a newcomer runs them: every `nas ...` line of its quick path and of "The
user's path", in order, from a temporary working directory with relative paths (storage, data,
--out), made small by flags appended to each line (the last value of a flag wins)."""

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request


from conftest import ROOT

SMALL = {  # appended to each command: a few hundred images, one epoch, a target every trial reaches
    "search": ["--max-epochs", "1", "--train-size", "300", "--val-size", "200", "--target-accuracy", "0.05", "--trials", "3", "--device", "cpu"],
    "train": ["--epochs", "1", "--train-size", "300", "--val-size", "200", "--device", "cpu"],
    "export": ["--epochs", "1", "--train-size", "300", "--device", "cpu"],
    "worker": ["--device", "cpu"],
}


def readme_commands(heading: str) -> list[list[str]]:
    """The `nas` lines of the first indented block after the line that contains `heading`."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if heading in line)
    block: list[str] = []
    for line in lines[start + 1:]:
        if line.startswith("    "):
            block.append(line.strip())
        elif block and line.strip():
            break
    return [shlex.split(line.split("  #")[0]) for line in block if line.startswith("nas ")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], cwd, env) -> str:
    if args[1] == "dashboard":  # serves until Ctrl-C: check that its URL answers, then stop it as a user would
        proc = subprocess.Popen([sys.executable, "-m", *args, "--port", str(free_port())], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=cwd, env=env)
        shown = ""
        while "Ctrl-C to stop" not in shown:
            line = proc.stdout.readline()
            assert line, (args, shown, proc.communicate(timeout=30))
            shown += line
        url = re.search(r"http://\S+", shown)[0].replace("/dashboard/studies/", "/api/studies/")
        deadline = time.time() + 60
        while True:  # the server starts listening just after it printed its URL
            try:
                with urllib.request.urlopen(url, timeout=30) as r:
                    assert r.status == 200
                break
            except OSError:
                assert time.time() < deadline, f"{url} did not answer"
                time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "Traceback" not in out + err, (args, out, err)
        return shown
    r = subprocess.run([sys.executable, "-m", *args, *SMALL.get(args[1], [])], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-2000:])
    return r.stdout


def test_the_readme_runs_as_written_from_a_temporary_folder(tmp_path, mnist_dir):
    quick, path = readme_commands("The whole path in about 10 minutes"), readme_commands("## The user's path")
    assert [c[1] for c in quick] == ["search", "dashboard", "best", "export", "predict"]
    assert [c[1] for c in path] == ["summary", "train", "space", "search", "worker", "dashboard", "report", "best", "export", "predict"]
    (tmp_path / "mnist").symlink_to(mnist_dir)  # NAS_DATA_DIR, relative like everything else
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "digit.png", tmp_path / "docs" / "digit.png")  # the picture the README points at, where its path finds it
    env = {**os.environ, "NAS_DATA_DIR": "mnist", "OMP_NUM_THREADS": "1"}
    env.pop("NAS_STORAGE", None)
    env.pop("NAS_ARTIFACTS", None)
    said = [run(command, tmp_path, env) for command in quick + path]
    assert (tmp_path / "studies" / "nas.sqlite3").is_file() and (tmp_path / "studies" / "artifacts").is_dir()
    from nas.ship import deploy
    from nas.ship.export import FILES

    written = sorted(FILES if not deploy.missing() else set(FILES) - {deploy.FP32, deploy.INT8})  # ONNX with the onnx extra
    for folder in ("runs/quick", "runs/winner"):
        assert sorted(p.name for p in (tmp_path / folder).iterdir()) == written
    assert (tmp_path / "runs" / "report" / "report.html").is_file()
    assert re.fullmatch(r"docs/digit\.png: \d  \(\d+\.\d %\)  \(dark on light: inverted to the training images' light on dark\)\n", said[4]), said[4]
    assert said[-1].startswith("docs/digit.png: ")


def test_your_own_data_runs_as_written(tmp_path, mnist_dir):
    """The "Your own data" block: its .npz files made (smaller) by the script it names, then its
    `nas` lines in order, small, from a temporary folder."""
    lines = (ROOT / "README.md").read_text().split("## Your own data", 1)[1].splitlines()
    script = next(line.strip() for line in lines if line.strip().startswith("python3 benchmarks/own_data.py"))
    commands = readme_commands("## Your own data")
    assert [c[1] for c in commands] == ["summary", "train", "train", "space", "search", "export", "predict", "search", "export", "predict"]
    (tmp_path / "benchmarks").mkdir()
    shutil.copy(ROOT / "benchmarks" / "own_data.py", tmp_path / "benchmarks")  # where the README's relative paths find it, as docs/digit.png below
    made = subprocess.run([sys.executable, *shlex.split(script.split("  #")[0])[1:], "--train", "600", "--test", "200", "--data-dir", str(mnist_dir)],
                          capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert made.returncode == 0, made.stderr
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "digit.png", tmp_path / "docs" / "digit.png")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("NAS_STORAGE", "NAS_ARTIFACTS", "NAS_DATA_DIR"):
        env.pop(key, None)
    said = [run(command, tmp_path, env) for command in commands]
    assert "(input 3x32x32, 10 classes)" in said[3] and "Total params: 9,346" in said[0]
    assert re.fullmatch(r"data/digit_rgb\.png: \d \w+  \(\d+\.\d %\)\n", said[-1]), said[-1]  # a class name, not inverted
    card = (tmp_path / "runs" / "rgb" / "README.md").read_text()
    assert "| 7 | seven |" in card and "[N, 32, 32, 3]" in card
