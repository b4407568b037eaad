"""The search: workers that ask the study for trials, train them and tell the results.

A study is its own source of truth (nas.study.settings, nas.study.storage): a worker on any machine reads
the settings from it. `search` creates or joins a study and starts this machine's worker processes
(planned by nas.search.placement, started by nas.search.processes); each runs `work`, whose Workers ask
for trials one at a time and hand each to an Objective (nas.search.objective), which prunes, trains and
records it, then tell the study its result. A study with fidelity levels is run whole (nas.search.ladder):
promotions waiting above first, else a new draw at level 0.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from nas.data import datasets
from nas.data.tensors import Data
from nas.data.tensors import load as load_data
from nas.search import interrupt, placement, processes
from nas.search.checkpoints import Checkpoints
from nas.search.ladder import Ladder, Level, plan_lines
from nas.search.objective import Log, quietly
from nas.search.placement import Slot, omp_threads, plan_workers, visible_gpus, worker_cap
from nas.search.progress import EpochBar
from nas.study import levels, notes
from nas.study import storage as st
from nas.study.analytics import best_trial, describe_trial, study_settings
from nas.study.settings import StudySettings
from nas.train.engine import Diverged, RestartWorker, resolve_device

optuna.logging.set_verbosity(optuna.logging.WARNING)

# How a worker process restarts (RestartWorker); a test records it instead.
EXEC: Callable[[str, list[str]], Any] = os.execv


@dataclass(frozen=True)
class Run:
    """What belongs to one machine and one invocation, not to the study."""

    device: str = "auto"
    data_dir: str | None = None
    workers: int | None = None  # processes on this machine (nas.search.placement: default one per GPU, or 1)
    # Trials each GPU runs at once (default nas.search.placement.DEFAULT_TRIALS_PER_GPU).
    trials_per_gpu: int | None = None
    artifacts: str | None = None  # folder of the artifact store (default: next to a SQLite or journal file)
    dataset: str | None = None  # --dataset: where the study's data is on this machine (nas.data.datasets.for_study)


def fail_reason(e: BaseException) -> str:
    if isinstance(e, torch.OutOfMemoryError):
        return f"out of memory: {str(e).splitlines()[0]}"
    if isinstance(e, Diverged):
        return str(e)
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"


class Worker:
    """One trial at a time from one study, until the study has enough finished trials, the
    deadline passes, or the process is stopped. Several Workers may share a process (several
    trials per GPU), each with its own sampler. A study with levels (nas.study.levels) is run
    whole: promotions waiting at a higher level first, else a new draw at level 0."""

    def __init__(
        self,
        name: str,
        loc: st.Location,
        study: optuna.Study,
        data: Data,
        device: torch.device,
        keeper: st.Keeper,
        log: Log,
        artifacts: Any = None,
        checkpoints: Callable[[str], Checkpoints] | None = None,
        restart: threading.Event | None = None,
    ):
        self.loc, self.keeper, self.log = loc, keeper, log
        self.restart = restart or threading.Event()  # shared by the Workers of a process
        self.top = st.RetriesFirst(study_name=name, storage=study._storage)
        self.settings = study_settings(self.top)
        number = st.next_worker(self.top, loc)
        self.ladder = Ladder(self.top, self.settings, number, data, device, log, artifacts, checkpoints, self.restart)
        self.levels = self.ladder.levels
        self.current: tuple[Level, optuna.Trial] | None = None
        self.estimate_due = False  # a trial ended at a count the search is estimated at: said after its promotion

    def run(self, goal: int | None, deadline: float | None) -> None:
        first, low = self.levels[0].objective, self.levels[0].study
        first.goal = goal or st.persist(lambda: self.top.user_attrs.get("trials_goal"), self.log, "reading the study")
        if first.goal:
            done = st.persist(lambda: st.finished(low.get_trials(deepcopy=False)), self.log, "reading the study")
            first.left = max(0, first.goal - done)
        while (deadline is None or time.time() < deadline) and not self.restart.is_set():
            interrupt.check()
            picked = st.persist(lambda: self.next_trial(goal), self.log, "starting a trial")
            if self.estimate_due:  # after next_trial's promotions, outside its study lock
                self.estimate_due = False
                quietly(
                    lambda: self.log(self.ladder.estimate(first.goal) or ""),
                    self.log,
                    "estimating the search",
                )
            if picked is None:
                return
            if picked is False:  # the last trials are running elsewhere; one may yet need a retry or promotion
                time.sleep(min(1.0, st.HEARTBEAT_SECONDS))
                continue
            level, trial = picked
            self.current = level, trial
            try:
                self.run_trial(trial, level)
            finally:
                self.keeper.untrack(trial._trial_id)
                self.current = None

    def next_trial(self, goal: int | None) -> tuple[Level, optuna.Trial] | bool | None:
        """A new trial and its level, False to wait, None when the study is done. Under the study
        lock, so that however many workers ask, level 0 ends with exactly `goal` finished trials
        (--trials counts architectures drawn; promotions come on top) and each promotion is made once."""
        with st.study_lock(self.loc, self.top.study_name):
            goal = goal if goal is not None else self.top.user_attrs.get("trials_goal")
            self.ladder.promote()
            if (above := self.ladder.waiting_above()) is not None:
                return self.ask(above)
            trials = self.levels[0].study.get_trials(deepcopy=False)
            done, running = st.finished(trials), sum(t.state == TrialState.RUNNING for t in trials)
            draw = goal is None or done + running < goal
            hours = self.top.user_attrs.get("hours_goal")
            if hours is not None:
                left = hours * 3600 - levels.searched(self.top)
                if left <= 0:
                    return None
                draw = draw and left > self.ladder.promotions_need()
            if draw:
                return self.ask(self.levels[0])
            if goal is not None and done < goal and hours is None:
                return False
            return False if self.ladder.running_below_top() else None

    def ask(self, level: Level) -> tuple[Level, optuna.Trial]:
        with interrupt.held():  # a trial once asked for is run, or recorded as interrupted
            trial = level.study.ask()
            self.keeper.track(trial._trial_id)
            with contextlib.suppress(Exception):  # for review only
                trial.set_user_attr("worker", st.worker_name())
        return level, trial

    def run_trial(self, trial: optuna.Trial, level: Level) -> None:
        values, state, again = None, TrialState.COMPLETE, False
        study, log = level.study, level.objective.log
        try:
            values = level.objective(trial)
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except KeyboardInterrupt:
            self.interrupted(trial, level)
            raise
        except RestartWorker as e:
            self.restart.set()
            log(f"[trial {trial.number}] stopped and enqueued again: {e}")
            self.requeue(trial, level, f"its worker restarted: {e}", lost_worker=False)
            return
        except UpdateFinishedTrialError:
            # This worker was cut off for longer than the grace: the trial is failed, its retry enqueued.
            log(f"[trial {trial.number}] was failed as stale by another worker while it ran; its retry runs it again")
            return
        except Exception as e:  # noqa: BLE001 - a failing trial is recorded and the search goes on
            if self.restart.is_set():  # the process's GPU state is suspect: not the trial's fault
                self.log(
                    f"[trial {trial.number}] stopped and enqueued again while its worker restarts ({fail_reason(e)})"
                )
                self.requeue(trial, level, f"its worker restarted: {fail_reason(e)}", lost_worker=False)
                return
            state, again = TrialState.FAIL, st.transient(e)  # the storage went away mid-trial: run it again
            reason = f"storage unreachable: {st.cause(e)}" if again else fail_reason(e)
            log(f"[trial {trial.number}] FAILED: {reason}{'; it will be retried' if again else ''}")
            st.persist(lambda: trial.set_user_attr("fail_reason", reason), log, "recording a failure")
        with interrupt.held():  # a finished trial's result is stored whole, even if Ctrl-C comes now
            t = self.tell(trial, level, values, state)
            if again:
                st.persist(
                    lambda: st.retry(study, study._storage.get_trial(trial._trial_id)),
                    self.log,
                    "enqueuing a retry",
                )
            elif (store := level.objective.checkpoints) is not None and t is not None and "config_key" in t.user_attrs:
                quietly(lambda: store.remove(t.user_attrs["config_key"]), self.log, "removing the checkpoint")
        if t is not None:
            self.review(t, level)

    def tell(self, trial: optuna.Trial, level: Level, values: Any, state: TrialState) -> FrozenTrial | None:
        """Store the result, waiting out a storage outage; if another worker failed the trial as
        stale meanwhile, the result is kept as a new trial rather than lost. Returns the trial as
        stored (None when it went to another trial)."""
        study, log = level.study, level.objective.log
        try:
            st.persist(lambda: study.tell(trial, values, state=state), self.log, "storing a result")
        except (ValueError, UpdateFinishedTrialError):
            frozen = study._storage.get_trial(trial._trial_id)
            if state == TrialState.FAIL or frozen.state != TrialState.FAIL:
                return None
            recovered = optuna.trial.create_trial(
                state=state,
                values=values if values is None or isinstance(values, (list, tuple)) else [values],
                params=frozen.params,
                distributions=frozen.distributions,
                user_attrs={
                    **{k: v for k, v in frozen.user_attrs.items() if k != "fail_reason"},
                    "recovered_from": frozen.number,
                },
            )
            st.persist(lambda: study.add_trial(recovered), self.log, "storing a recovered result")
            log(f"[trial {trial.number}] was failed as stale while it ran; its result is kept as a new trial")
            return None
        t = st.persist(lambda: study._storage.get_trial(trial._trial_id), self.log, "reading the result")
        if state == TrialState.COMPLETE:
            best = st.persist(lambda: best_trial(self.top), self.log, "reading the best trial")
            so_far = describe_trial(best, level.objective.minimized) if best else "none meets the target yet"
            log(
                f"[trial {t.number}] COMPLETE {100 * t.values[0]:.2f} % val acc, {t.user_attrs['params']:,} params, "
                f"{t.user_attrs.get('train_seconds', 0):.0f} s; best so far: {so_far}"
            )
        if len(self.levels) > 1 and state != TrialState.FAIL:
            n = st.finished(study.get_trials(deepcopy=False))
            # the estimate again as the search learns what trials take, once the trial's promotion is made
            self.estimate_due = self.estimate_due or n in (1, 3) or n % 10 == 0
        return t

    def review(self, t: FrozenTrial, level: Level) -> None:
        """The dashboard's notes: the trial's own, and the study's (one writer at a time, under
        the study lock, since optuna-dashboard saves a note read-modify-write in chunks)."""

        def study_note() -> None:
            with st.study_lock(self.loc, self.top.study_name):
                notes.save_study_note(level.study)

        quietly(lambda: notes.save_trial_note(level.study, t), self.log, "writing the trial note")
        quietly(study_note, self.log, "writing the study note")

    def interrupted(self, trial: optuna.Trial, level: Level) -> None:
        """Ctrl-C: record the trial as failed and enqueue it again (an interrupt is no lost worker:
        it does not count toward the retry cap), so a resumed search runs it first, from its last
        checkpoint."""
        self.requeue(trial, level, "interrupted (Ctrl-C)", lost_worker=False)

    def requeue(self, trial: optuna.Trial, level: Level, reason: str, lost_worker: bool = True) -> None:
        """Record a trial this process stops as failed and enqueue a clean copy to run first;
        `lost_worker=False` when the trial did nothing wrong (an interrupt, a restarting worker), so
        it does not use up the retries of its configuration (nas.study.storage.MAX_RETRIES)."""
        with interrupt.held():
            try:
                trial.set_user_attr("fail_reason", reason)
                level.study.tell(trial, state=TrialState.FAIL)
                st.retry(level.study, level.study._storage.get_trial(trial._trial_id), lost_worker=lost_worker)
            except Exception:  # noqa: BLE001 - stopping must not fail; the reaper retries a trial left RUNNING
                pass


def work(
    name: str, url: str, run: Run, goal: int | None, deadline: float | None, slot: Slot | None = None, prefix: str = ""
) -> None:
    """One worker process: load the data once, then run the slot's trials at a time. When a trial
    raises RestartWorker (its CUDA state is suspect), every trial of the process stops at its next
    epoch and is re-enqueued, and the process is re-executed as `nas worker` (restart_command)."""
    if slot is not None:
        torch.set_num_threads(slot.threads)
    threads = slot.trials if slot is not None else 1
    loc = st.parse(url)
    log: Log = lambda msg: print(prefix + msg, flush=True)  # noqa: E731
    # The parent checked that the study exists: wait out an outage.
    study = st.persist(lambda: st.open_study(name, url), log, "joining the study")
    settings = study_settings(study)
    device = resolve_device(run.device)
    ds = datasets.for_study(settings.dataset, run.dataset, run.data_dir, log)
    data = load_data(run.data_dir, device, val_size=settings.val_size, train_size=settings.train_size, dataset=ds)
    folder, artifacts = notes.artifact_store_for(url, run.artifacts)

    def checkpoints(level_study: str) -> Checkpoints:  # each level keeps its own
        return Checkpoints.of(url, level_study, folder)

    def reaped(of: optuna.Study, t: FrozenTrial, retried: bool) -> None:
        quietly(lambda: notes.save_trial_note(of, t), log, "writing the trial note")
        if not retried and "config_key" in t.user_attrs:  # the configuration is given up: so is its checkpoint
            key = t.user_attrs["config_key"]
            quietly(lambda: checkpoints(of.study_name).remove(key), log, "removing the checkpoint")

    def tick() -> None:  # the searching clock (--hours), shared by every process and machine
        with st.study_lock(loc, name):
            levels.tick(study._storage, study._study_id, st.GRACE_SECONDS)

    restart = threading.Event()
    watched = [*(s for s in levels.lower_studies(study, settings.ladder) if s is not None), study]
    with st.Keeper(watched, log, reaped, tick) as keeper, interrupt.catching():
        workers = [
            st.persist(
                lambda: Worker(name, loc, study, data, device, keeper, log, artifacts, checkpoints, restart),
                log,
                "starting a worker",
            )
            for _ in range(threads)
        ]
        if threads == 1:
            if sys.stdout.isatty():
                for level in workers[0].levels:
                    level.objective.progress = EpochBar()
            workers[0].run(goal, deadline)
        else:
            pool = [threading.Thread(target=w.run, args=(goal, deadline), daemon=True) for w in workers]
            for t in pool:
                t.start()
            try:
                for t in pool:
                    t.join()
            except KeyboardInterrupt:
                for w in workers:
                    if w.current is not None:
                        w.interrupted(w.current[1], w.current[0])
                raise
    if restart.is_set():
        cmd = restart_command(name, url, run, goal, deadline, slot)
        if cmd is None:
            log("the worker would restart, but its time is up")
            return
        log(
            f"this worker process restarts (its CUDA state is suspect after failed graph captures): {' '.join(cmd[1:])}"
        )
        sys.stdout.flush()
        sys.stderr.flush()
        EXEC(cmd[0], cmd)


def restart_command(
    name: str, url: str, run: Run, goal: int | None, deadline: float | None, slot: Slot | None
) -> list[str] | None:
    """The command that takes a restarting worker's place: `nas worker` on the same study, with the
    same per-run options, trials at a time, goal and deadline (None when the deadline has passed).
    It inherits this process's environment, so a worker pinned to a GPU stays on it."""
    cmd = [
        sys.executable,
        "-m",
        "nas",
        "worker",
        "--study-name",
        name,
        "--storage",
        url,
        "--device",
        run.device,
        "--workers",
        "1",
    ]
    if slot is not None and slot.gpu is not None:
        cmd += ["--trials-per-gpu", str(slot.trials)]
    if run.data_dir:
        cmd += ["--data-dir", run.data_dir]
    if run.dataset:
        cmd += ["--dataset", run.dataset]
    if run.artifacts:
        cmd += ["--artifacts", run.artifacts]
    if goal:
        cmd += ["--trials", str(goal)]
    if deadline is not None:
        left = deadline - time.time()
        if left < 1:
            return None
        cmd += ["--timeout", f"{left:.0f}"]
    return cmd


def _work_entry(args: tuple) -> None:
    try:
        work(*args)
    except KeyboardInterrupt:
        pass


def plan(run: Run, log: Log = print) -> list[Slot]:
    """This machine's worker processes (nas.search.placement): one per GPU running several trials at
    once, or on the CPU --workers processes (default 1) sharing the cores; more than the machine
    can run at once are not started, and the log says so."""
    device = resolve_device(run.device)
    gpus = visible_gpus(torch.cuda.device_count()) if device.type == "cuda" else []
    workers = run.workers
    if workers is not None:
        cap, why = worker_cap(len(gpus), run.trials_per_gpu)
        if workers > cap:
            log(f"warning: --workers {workers} is more than this machine runs at once ({why}); starting {cap}")
            workers = cap
    return plan_workers(gpus, workers, run.trials_per_gpu, thread_cap=omp_threads())


def search(
    name: str,
    url: str,
    settings: StudySettings | None,
    trials: int | None,
    timeout: float | None,
    run: Run = Run(),
    given: dict[str, Any] | None = None,
    hours: float | None = None,
) -> optuna.Study:
    """Create or join a study and run workers on it until it has `trials` finished trials at its
    first level (or the stored goal), `hours` of searching summed over runs (or the stored
    budget), or `timeout` seconds of this run have passed.

    Everything that can be wrong with the input is checked before the study is touched, so a
    failed start leaves nothing behind."""
    loc = st.parse(url)
    stored = st.stored_settings(name, url)  # None: a new study (or no such study, which open_study says)
    if stored is not None:
        stored.reconcile(given or {}, name)
    elif settings is not None:
        settings.check_reachable()
    slots = plan(run, lambda line: print(line, flush=True))
    chosen = stored or settings
    if chosen is not None:  # missing, corrupt or other data fails here, before any study exists
        datasets.for_study(chosen.dataset, run.dataset, run.data_dir, lambda line: print(line, flush=True))
    folder = loc.path.parent if loc.path is not None else None
    new_folder = folder is not None and not folder.exists()
    study = st.open_study(name, url, settings, given)
    # After opening: a study that cannot be opened is its error line alone.
    print(f"study {name!r} in {st.masked(url)}", flush=True)
    if new_folder:
        print(f"created the folder {folder}/ for the study storage", flush=True)
    if stored is None and settings is not None and "seed_archs" not in (given or {}) and settings.unfit_builtins():
        print(settings.unfit_builtins(), flush=True)
    if trials is not None and settings is not None:
        study.set_user_attr("trials_goal", trials)
    if hours is not None:
        study.set_user_attr("hours_goal", hours)
    s = study_settings(study)
    low = levels.lower_studies(study, s.ladder)[0] if len(s.ladder) > 1 else study
    assert low is not None  # open_study made every level
    done, goal = st.finished(low.get_trials(deepcopy=False)), trials or study.user_attrs.get("trials_goal")
    print(
        f"budget {s.max_params:,} params, {s.max_epochs} epochs, target {100 * s.target_accuracy:.2f} % val acc, "
        f"objective {s.objective}; {done} {'drawn' if len(s.ladder) > 1 else 'finished'} so far"
        f"{f', running until {goal}' if goal else ''}; {placement.describe(slots)}",
        flush=True,
    )
    for line in plan_lines(study, s):
        print(line, flush=True)
    deadline = time.time() + timeout if timeout else None
    if len(slots) == 1:  # in this process (its first GPU is the slot's)
        work(name, url, run, trials, deadline, slots[0])
        return study
    jobs = [(x, ((name, url, run, trials, deadline, x, f"[w{x.worker}] "),)) for x in slots]
    processes.run_all(_work_entry, jobs)  # each in a process of its own, with its slot's GPU and threads
    return study
