"""Many workers on one study, one of them killed mid-trial: do exactly N trials finish, with no
architecture trained twice and the killed worker's trial retried?

    python3 benchmarks/many_workers.py --storage postgresql+psycopg://nas@127.0.0.1:5432/nas \\
        [--workers 8] [--trials 40] [--data-dir DIR]

`nas search` creates the study (tiny trials: 2 epochs on 1,000 images), then `nas worker`
processes join it as other machines would; once trials are running, one worker is killed
with SIGKILL. Heartbeats are shortened to 2 s (NAS_HEARTBEAT_SECONDS) so the run takes
minutes, not hours; the default is 10 s.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections import Counter

from optuna.trial import TrialState

from nas.errors import SpecError
from nas.study.storage import finished, load_study


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--storage", required=True)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--study-name", default=f"many-{int(time.time())}")
    args = p.parse_args()
    env = {**os.environ, "NAS_HEARTBEAT_SECONDS": "2", "OMP_NUM_THREADS": "1"}
    common = ["--storage", args.storage, "--study-name", args.study_name, "--device", "cpu"] + (
        ["--data-dir", args.data_dir] if args.data_dir else []
    )

    def nas(*extra: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "nas", *extra, *common],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )

    start = time.time()
    procs = [
        nas(
            "search",
            "--trials",
            str(args.trials),
            "--max-epochs",
            "2",
            "--train-size",
            "1000",
            "--val-size",
            "500",
            "--target-accuracy",
            "0.9",
        )
    ]
    while True:
        try:
            load_study(args.study_name, args.storage)
            break
        except SpecError:
            time.sleep(0.2)
    procs += [nas("worker") for _ in range(args.workers - 1)]
    victims = {f":{proc.pid}": proc for proc in procs[1:]}
    killed, victim = None, None
    while killed is None:
        for t in load_study(args.study_name, args.storage).get_trials(states=(TrialState.RUNNING,)):
            tag = next(
                (k for k in victims if t.user_attrs.get("worker", "").endswith(k) and "curve" in t.user_attrs), None
            )
            if tag:
                victim = victims[tag]
                victim.send_signal(signal.SIGKILL)
                killed = t.number
                print(
                    f"killed worker {tag[1:]} while it trained trial {killed} ({time.time() - start:.0f} s in)",
                    flush=True,
                )
                break
        time.sleep(0.3)
    codes = [proc.wait() for proc in procs if proc is not victim]
    trials = load_study(args.study_name, args.storage).get_trials()
    # finished trainings only: the killed trial's partial curve is what its retry redoes
    trained = Counter(
        t.user_attrs["config_key"]
        for t in trials
        if t.state.is_finished()
        and t.state != TrialState.FAIL
        and "curve" in t.user_attrs
        and "duplicate_of" not in t.user_attrs
    )
    retries = [t for t in trials if t.user_attrs.get("retry_of") == killed]
    states = Counter(t.state.name for t in trials)
    print("\n| workers | trials asked | finished | trained twice | killed trial | its retry | states | wall time |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.workers} ({len(codes)} exited 0: {all(c == 0 for c in codes)}) | {args.trials} | "
        f"{finished(trials)} | {sum(n - 1 for n in trained.values())} | "
        f"{killed}: {trials[killed].state.name}, {trials[killed].user_attrs.get('fail_reason', '')[:40]} | "
        f"{', '.join(f'{t.number}: {t.state.name}' for t in retries) or 'none'} | {dict(states)} | "
        f"{time.time() - start:.0f} s |"
    )


if __name__ == "__main__":
    main()
