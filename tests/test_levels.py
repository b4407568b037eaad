"""Fidelity levels (nas.study.levels): the ladder as a setting, promotion in the Pareto sense, the
searching clock, and searches whose levels never mix."""

from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from test_search import run_cli
from typer.testing import CliRunner

from nas.arch.budgets import resource
from nas.arch.spec import load_arch
from nas.cli.app import app
from nas.errors import SpecError
from nas.search.ladder import plan_lines
from nas.search.objective import Objective
from nas.space.spaces import point_key
from nas.study import keeper, levels
from nas.study import storage as st
from nas.study.analytics import ConvergenceRule, best_trial
from nas.study.settings import DEFAULT_SCREEN, StudySettings
from nas.train.config import TrainConfig

PARAMS = resource("params")
# Two levels, small: level 0 trains 1 epoch on 300 images, the top 2 epochs on 600.
LADDER = [
    "--max-epochs",
    "2",
    "--levels",
    "1x300",
    "--train-size",
    "600",
    "--val-size",
    "300",
    "--target-accuracy",
    "0.05",
]


def load(url, name="mnist"):
    return optuna.load_study(study_name=name, storage=st.open_storage(st.parse(url), create=False))


def done(number, acc, params, **attrs):
    t = create_trial(
        state=TrialState.COMPLETE,
        values=[acc, params],
        user_attrs={"params": params, "arch": "{}", "curve": [acc], **attrs},
    )
    t.number = number
    return t


def test_pareto_ranks_sort_fronts():
    points = [(0.9, 100), (0.95, 200), (0.85, 150), (0.8, 300), (0.95, 250)]
    assert levels.pareto_ranks(points) == [0, 0, 1, 2, 1]


def test_hypervolume_counts_the_dominated_staircase_once():
    # (0.9, 100) dominates [100, 200) x [0.8, 0.9]; from 200 on (0.95, 200) covers up to 0.95;
    # (0.85, 150) and (0.96, 500: over the ceiling) add nothing
    points = [(0.95, 200), (0.9, 100), (0.85, 150), (0.96, 500), (0.7, 50)]
    assert levels.hypervolume(points, floor=0.8, ceiling=400) == pytest.approx(100 * 0.1 + 200 * 0.15)
    assert levels.hypervolume([], floor=0.8, ceiling=400) == 0


def test_promotion_takes_the_top_share_by_pareto_rank_then_accuracy_and_always_the_built_ins():
    trials = [done(i, acc, p) for i, (acc, p) in enumerate([(0.90, 100), (0.97, 900), (0.95, 300), (0.80, 500)])]
    trials.append(done(4, 0.70, 800, seed_arch="seed_9274"))
    pruned = create_trial(state=TrialState.PRUNED, user_attrs={"curve": [0.1]})  # trained, so it counts in n
    pruned.number = 5
    # n = 6 trained, eta 3: the top 2 of rank 0 (trials 0, 1, 2) by accuracy: 1 and 2; and the built-in
    got = levels.promotable([*trials, pruned], 3, PARAMS, True, promoted=set())
    assert [t.number for t in got] == [1, 2, 4]
    assert [t.number for t in levels.promotable([*trials, pruned], 3, PARAMS, True, promoted={1, 4})] == [2]
    # objective accuracy: accuracy alone
    assert [t.number for t in levels.promotable(trials, 2.5, PARAMS, False, set())] == [1, 2, 4]


def above(number, parent, state, reason=None):
    """A promoted trial one level up, complete or pruned (for `reason`)."""
    attrs = {"parent": parent, **({"prune_reason": reason} if reason else {})}
    t = create_trial(state=state, values=[0.99, 1] if state == TrialState.COMPLETE else None, user_attrs=attrs)
    t.number = number
    return t


def test_a_trial_no_better_than_one_the_level_above_pruned_is_not_promoted():
    trials = [done(i, acc, p) for i, (acc, p) in enumerate([(0.95, 100), (0.98, 900), (0.97, 300), (0.96, 200)])]
    assert levels.promotion_floor(trials, []) is None
    # trial 2 (0.97) was promoted and pruned for convergence up there: 0.97 is the floor
    up = [above(0, 2, TrialState.PRUNED, "convergence"), above(1, 1, TrialState.COMPLETE)]
    assert levels.promotion_floor(trials, up) == pytest.approx(0.97)
    # a pruned trial with no recorded reason (a study from before reasons) was pruned for
    # convergence, as the outcome counts read it
    assert levels.promotion_floor(trials, [above(0, 2, TrialState.PRUNED), up[1]]) == pytest.approx(0.97)
    # pruned by budget or the Pareto rule, failed or running: they teach nothing about accuracy
    for other in (
        above(2, 3, TrialState.PRUNED, "pareto: behind"),
        above(3, 3, TrialState.FAIL),
        above(4, 3, TrialState.RUNNING),
    ):
        assert levels.promotion_floor(trials, [other]) is None
    # a completed promotion that did no better below lowers it again to the pruned ones under it
    lower = [*up, above(5, 0, TrialState.PRUNED, "convergence"), above(6, 3, TrialState.COMPLETE)]
    assert levels.promotion_floor(trials, lower) == pytest.approx(0.95)
    # eta 2, n = 5: trials 0-3 are all on the front, so the top 3 go by accuracy (1, 2, 3); a floor
    # of 0.96 drops trial 3 (0.96, not above it); the built-in goes up whatever its accuracy
    trials.append(done(4, 0.90, 950, seed_arch="rec_3762"))
    assert [t.number for t in levels.promotable(trials, 2, PARAMS, True, set())] == [1, 2, 3, 4]
    assert [t.number for t in levels.promotable(trials, 2, PARAMS, True, set(), floor=0.96)] == [1, 2, 4]


def test_a_level_sets_its_own_pruning_bar_once_enough_trials_trained():
    trials = [done(i, 0.5 + i / 100, 100 * (10 - i)) for i in range(5)]
    assert levels.screen_target(trials, 3, PARAMS, False) is None  # 5 < 2 x eta
    trials.append(done(5, 0.2, 50))
    # n = 6, eta 3: the top 2 by accuracy (0.54, 0.53); the bar is the lower of them
    assert levels.screen_target(trials, 3, PARAMS, False) == pytest.approx(0.53)


def test_the_clock_counts_time_while_someone_searches_and_not_the_gaps(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/c.db")
    tick = lambda now: levels.tick(study._storage, study._study_id, gap=30, now=now)  # noqa: E731
    assert tick(1000) == 0  # the first tick starts the clock
    assert tick(1010) == 10 and tick(1035) == 35  # two processes' ticks 10 and 25 s apart
    assert tick(5000) == 35  # an hour with nobody searching adds nothing
    assert tick(5020) == 55 and levels.searched(study) == 55


def test_levels_are_a_setting_with_a_default_where_it_fits():
    assert StudySettings().levels == (DEFAULT_SCREEN,) and StudySettings().ladder == ((4, 20_000), (20, 50_000))
    assert StudySettings(max_epochs=3, train_size=3000).levels == ()  # the top is cheaper than the screen
    assert StudySettings(levels=()).ladder == ((20, 50_000),)
    low = StudySettings(seeds_per_trial=3).at_level(0)
    assert (low.max_epochs, low.train_images, low.seeds_per_trial, low.levels) == (4, 20_000, 1, ())
    # a study stored before levels existed keeps its meaning: one level
    old = StudySettings().to_dict()
    del old["levels"]
    assert StudySettings.from_dict(old).levels == ()
    with pytest.raises(SpecError, match="must cost less than the top"):
        StudySettings(max_epochs=2, train_size=600, levels=((2, 600),))
    with pytest.raises(SpecError, match="at most the top's 2 epochs"):
        StudySettings(max_epochs=2, train_size=600, levels=((3, 100),))
    assert levels.parse_levels("4x20000, 8x30_000") == ((4, 20_000), (8, 30_000)) and levels.parse_levels("none") == ()
    with pytest.raises(SpecError, match="EPOCHSxIMAGES"):
        levels.parse_levels("4-20000")


def test_the_checkpoint_and_twin_key_tells_levels_apart():
    arch, cfg = load_arch("seed_9274"), TrainConfig(epochs=4)
    assert point_key(arch, cfg, 1, 20_000) != point_key(arch, cfg, 1, 50_000)


def test_a_retried_promotion_keeps_its_level_and_parent(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/r.db")
    study.enqueue_trial({"x": 1}, user_attrs={"parent": 7, "level": 1})
    trial = study.ask()
    trial.suggest_int("x", 0, 3)
    study.tell(trial, state=TrialState.FAIL)
    assert keeper.retry(study, study.trials[0])
    assert {k: study.trials[1].user_attrs[k] for k in ("parent", "level", "retry_of")} == {
        "parent": 7,
        "level": 1,
        "retry_of": 0,
    }


def test_a_search_with_levels_draws_at_the_bottom_and_answers_from_the_top(tmp_path, mnist_dir):
    store = f"sqlite:///{tmp_path}/s.db"
    out = run_cli("search", "--trials", 6, "--storage", store, "--data-dir", mnist_dir, *LADDER)
    low, top = load(store, "mnist@1x300"), load(store)
    lows, tops = low.trials, top.trials
    # --trials counts architectures drawn at level 0; the built-ins start there
    assert sum(t.state.is_finished() for t in lows) == 6 and lows[0].user_attrs["seed_arch"] == "seed_9274"
    assert all(t.user_attrs.get("level") == 0 and len(t.user_attrs.get("curve", [0])) == 1 for t in lows)
    # the top trains only promotions: each parent once, its parameters, two epochs on 600 images
    parents = [t.user_attrs["parent"] for t in tops]
    assert tops and len(parents) == len(set(parents)) and all(t.user_attrs["level"] == 1 for t in tops)
    for t in tops:
        assert t.params == lows[t.user_attrs["parent"]].params and len(t.user_attrs["curve"]) == 2
    built_in = {t.user_attrs["seed_arch"] for t in lows if "seed_arch" in t.user_attrs and t.state.is_finished()}
    assert built_in <= {t.user_attrs.get("seed_arch") for t in tops}  # the bar to beat, always promoted
    # the top's front and best are its own; the summary shows each level apart
    assert "level 0 (1 epochs x 300 images, study 'mnist@1x300')" in out and "level 1 (the top" in out
    assert "levels: 1 epochs x 300 images -> 2 epochs x 600 images" in out and "L0 [trial 0]" in out
    assert "estimate: a trial takes level 0 " in out and "it ends about" in out  # and again as it learns
    # said once the trial that ended is promoted, so it counts that promotion
    assert out.index("L0 [trial 0] promoted to level 1") < out.index("estimate: ")
    answer = best_trial(load(store))
    assert answer is not None and f"best: trial {answer.number}: {100 * answer.values[0]:.2f} %" in run_cli(
        "best", "--storage", store
    )
    # a level is not a study to search on its own
    refused = CliRunner().invoke(app, ["search", "--study", "mnist@1x300", "--storage", store, *LADDER])
    assert "is a lower level of study 'mnist'" in str(refused.exception)
    # resumed with another ladder: refused in one line
    other = CliRunner().invoke(app, ["search", "--storage", store, "--data-dir", str(mnist_dir), "--levels", "none"])
    assert "--levels 1x300" in str(other.exception)


def test_the_hours_budget_is_stored_and_ends_the_search(tmp_path, mnist_dir):
    store = f"sqlite:///{tmp_path}/h.db"
    run_cli("search", "--trials", 2, "--hours", 1, "--storage", store, "--data-dir", mnist_dir, *LADDER)
    top = load(store)
    assert top.user_attrs["hours_goal"] == 1 and levels.searched(top) > 0
    # spent: the clock says an hour has been searched, so a resumed run starts nothing
    clock = top._storage.get_study_system_attrs(top._study_id)[levels.CLOCK]
    top._storage.set_study_system_attr(top._study_id, levels.CLOCK, {**clock, "seconds": 3600.0})
    before = len(load(store, "mnist@1x300").trials) + len(top.trials)
    out = run_cli("search", "--trials", 20, "--storage", store, "--data-dir", mnist_dir)
    assert len(load(store, "mnist@1x300").trials) + len(load(store).trials) == before
    assert "time budget: 1 h of searching, 1h00m" in out
    assert "a trial has taken level 0 " in out and "level 1 (none yet)" not in out  # measured in the first run


@pytest.mark.parametrize(
    "ladder, says", [(None, "what the waiting promotions need"), ((), "new draws stop when it is spent")]
)
def test_the_plan_says_when_the_time_budget_stops_new_draws(ladder, says):
    study = optuna.create_study()
    study.set_user_attr("hours_goal", 2.0)
    lines = plan_lines(study, StudySettings(levels=ladder))
    assert ("levels: " in lines[0]) == (ladder is None) and says in lines[-1]
    assert ladder is None or "promotions" not in lines[-1]  # a search of one level promotes nothing


@pytest.mark.parametrize("objective, rank", [("pareto", "by Pareto rank"), ("accuracy", "by accuracy")])
def test_the_plan_names_the_rank_that_promotes(objective, rank):
    assert rank in plan_lines(optuna.create_study(), StudySettings(objective=objective))[0]


def test_two_workers_promote_each_trial_once(tmp_path, mnist_dir):
    store = f"journal:///{tmp_path}/w.log"  # the file a long search is committed and resumed in
    run_cli("search", "--trials", 8, "--workers", 2, "--storage", store, "--data-dir", mnist_dir, *LADDER)
    parents = [t.user_attrs["parent"] for t in load(store).trials]
    assert parents and len(parents) == len(set(parents))
    assert sum(t.state.is_finished() for t in load(store, "mnist@1x300").trials) == 8


def test_a_built_in_is_never_pruned_below_the_top_so_it_is_always_promoted():
    screen = Objective.__new__(Objective)
    screen.screen_eta, screen.minimized, screen.pareto, screen.log = 2.0, PARAMS, True, print
    screen.rule = mission = ConvergenceRule(0.994, 4)
    trials = [done(i, 0.9 + i / 100, 100) for i in range(6)]
    study = SimpleNamespace(get_trials=lambda deepcopy=False: trials)
    drawn = SimpleNamespace(user_attrs={}, study=study)
    assert screen.rule_for(drawn).target == pytest.approx(0.93)  # the level's bar: the lowest of its top 3
    assert screen.rule_for(SimpleNamespace(user_attrs={"seed_arch": "seed_9274"}, study=study)) is None
    screen.screen_eta = None
    assert screen.rule_for(drawn) is mission  # the top level: the mission's rule


def test_the_ladder_promotes_above_the_floor_and_says_once_what_it_held_back():
    from nas.search.ladder import Ladder, Level

    low, top = (
        optuna.create_study(directions=["maximize", "minimize"]),
        optuna.create_study(directions=["maximize", "minimize"]),
    )
    for acc, params in [(0.97, 300), (0.98, 900), (0.96, 200), (0.95, 100), (0.94, 50)]:
        low.add_trial(done(0, acc, params))
    pruned = create_trial(state=TrialState.PRUNED, user_attrs={"parent": 0, "prune_reason": "convergence"})
    top.add_trial(pruned)  # trial 0 (0.97) went up and was pruned there: the floor is 0.97
    said: list[str] = []
    ladder = Ladder.__new__(Ladder)
    ladder.settings, ladder.log, ladder.held = SimpleNamespace(promote_eta=2.0), said.append, set()
    objective = SimpleNamespace(minimized=PARAMS, pareto=True)
    ladder.levels = [Level(0, low, objective), Level(1, top, objective)]
    ladder.promote()
    ladder.promote()
    # n = 5, eta 2, all on the front: the top 3 by accuracy are 1, 0 (up already) and 2, under the floor
    assert [t.user_attrs["parent"] for t in top.get_trials(states=(TrialState.WAITING,))] == [1]
    assert [line for line in said if "not promoted" in line] == [
        "L0 [trial 2] not promoted: 96.00 % val acc is no better than 97.00 %, a promoted trial's that level 1 pruned"
    ]


def test_a_promotion_that_waited_is_pruned_before_training_once_a_floor_holds_it_back():
    from nas.study.analytics import counts

    low, top = (optuna.create_study(directions=["maximize", "minimize"]) for _ in range(2))
    for acc, params in [(0.97, 300), (0.96, 200), (0.98, 900)]:
        low.add_trial(done(0, acc, params))
    top.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={"parent": 0, "prune_reason": "convergence"}))
    screen = Objective.__new__(Objective)
    screen.level, screen.below = 1, low
    waited = lambda **attrs: SimpleNamespace(user_attrs=attrs, study=top)  # noqa: E731
    assert screen.under_floor(waited(parent=1)) == (
        "96.00 % val acc at level 0 is no better than 97.00 %, a promoted trial's that this level pruned"
    )
    assert screen.under_floor(waited(parent=2)) is None  # above the floor
    assert screen.under_floor(waited(parent=1, seed_arch="rec_3762")) is None  # a built-in always trains
    screen.below = None  # level 0: nothing is promoted into it
    assert screen.under_floor(waited(parent=1)) is None
    top.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={"parent": 1, "prune_reason": "floor: held"}))
    assert counts(top)["pruned_floor"] == 1 and counts(top)["pruned_convergence"] == 1
