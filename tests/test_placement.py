import subprocess
import sys
from collections import Counter

import pytest

from nas.search.placement import DEFAULT_TRIALS_PER_GPU, plan_workers, visible_gpus


def per_gpu(slots):
    totals = Counter()
    for s in slots:
        totals[s.gpu] += s.trials
    return dict(totals)


def test_cpu_splits_the_cores_between_processes():
    slots = plan_workers(0, 2, cpus=2)
    assert [(s.worker, s.gpu, s.trials, s.threads) for s in slots] == [(0, None, 1, 1), (1, None, 1, 1)]
    assert all(s.env == {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"} for s in slots)
    alone = plan_workers(0, None, cpus=8)
    assert len(alone) == 1 and alone[0].threads == 8 and alone[0].trials == 1
    assert plan_workers(0, 16, cpus=2)[0].threads == 1  # never fewer than one thread
    assert plan_workers(0, 1, cpus=8, thread_cap=1)[0].threads == 1  # OMP_NUM_THREADS=1 is kept, as torch keeps it


def test_one_gpu_defaults_to_one_process_with_concurrent_trials():
    (slot,) = plan_workers(1, cpus=16)
    assert slot.gpu == "0" and slot.trials == DEFAULT_TRIALS_PER_GPU and slot.threads == 16
    assert slot.env["CUDA_VISIBLE_DEVICES"] == "0"
    assert plan_workers(1, trials_per_gpu=1)[0].trials == 1


@pytest.mark.parametrize(
    "workers, trials, expected", [(4, 4, [1, 1, 1, 1]), (3, 4, [2, 1, 1]), (2, 5, [3, 2]), (6, 2, [1] * 6)]
)
def test_workers_on_one_gpu_share_its_trials(workers, trials, expected):
    slots = plan_workers(1, workers, trials, cpus=12)
    assert [s.trials for s in slots] == expected and {s.gpu for s in slots} == {"0"}
    assert all(s.threads == 12 // workers for s in slots)


def test_several_gpus_each_worker_pinned_and_every_gpu_filled():
    slots = plan_workers(4, cpus=32)
    assert [s.gpu for s in slots] == ["0", "1", "2", "3"] and [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == [
        "0",
        "1",
        "2",
        "3",
    ]
    assert per_gpu(slots) == {g: DEFAULT_TRIALS_PER_GPU for g in "0123"} and all(s.threads == 8 for s in slots)
    uneven = plan_workers(2, 5, 4, cpus=10)
    assert [s.gpu for s in uneven] == ["0", "1", "0", "1", "0"]
    assert per_gpu(uneven) == {"0": 4, "1": 4} and [s.trials for s in uneven] == [2, 2, 1, 2, 1]


def test_pins_the_physical_ids_a_restricted_parent_sees():
    ids = visible_gpus(2, {"CUDA_VISIBLE_DEVICES": "2,3"})
    assert ids == ["2", "3"]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in plan_workers(ids, 4, 2)] == ["2", "3", "2", "3"]
    assert visible_gpus(2, {}) == ["0", "1"]
    assert visible_gpus(1, {"CUDA_VISIBLE_DEVICES": "GPU-5f3a,GPU-77b1"}) == ["GPU-5f3a"]


@pytest.mark.parametrize("kwargs", [dict(gpus=1, workers=0), dict(gpus=1, trials_per_gpu=0)])
def test_bad_counts_are_refused(kwargs):
    with pytest.raises(ValueError):
        plan_workers(**kwargs)


def test_placement_does_not_import_torch():
    code = "import sys, nas.search.placement; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_more_workers_than_the_machine_runs_at_once_are_capped():
    """64 workers on 2 cores once ran for minutes without a trial; on GPUs, processes beyond
    the concurrent trials only wait their turn."""
    from nas.search.placement import worker_cap

    assert worker_cap(0, cpus=2) == (2, "2 CPU cores")
    assert worker_cap(1, None, cpus=16) == (
        DEFAULT_TRIALS_PER_GPU,
        f"1 GPU x {DEFAULT_TRIALS_PER_GPU} trials at a time",
    )
    assert worker_cap(2, 8, cpus=6) == (6, "6 CPU cores")


def test_the_plan_is_told_in_a_few_words_however_many_workers():
    from nas.search.placement import describe

    assert describe(plan_workers(0, 64, cpus=2)) == "64 workers on the CPU, 1 thread each"
    assert describe(plan_workers(0, None, cpus=2)) == "1 worker on the CPU, 2 threads"
    assert (
        describe(plan_workers(["3", "5"], 4, 2, cpus=8))
        == "GPU 3: 2 trials at a time in 2 workers; GPU 5: 2 trials at a time in 2 workers"
    )
