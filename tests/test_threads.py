"""Thread counts for the work: one thread for a small head on cached features, restored after it,
a count the user chose left alone, OpenMP's wait policy set only by graft's entry point."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest
import torch

from graftkit import TrainConfig, fit
from graftkit.engine import runtime
from graftkit.engine.runtime import phase_threads, torch_threads, user_threads

from .conftest import TINY

fit_module = importlib.import_module("graftkit.engine.fit")  # the module, not graftkit.engine.fit()


@pytest.fixture
def default_threads(monkeypatch):
    """Two threads as PyTorch's default, no thread variables: the same on every machine; restored after."""
    before = torch.get_num_threads()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", runtime.LAUNCHER_THREADS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(runtime, "physical_cores", lambda: 2)
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_torch_threads_sets_the_count_for_the_block_and_restores_it(default_threads):
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("the block failed")
    assert torch.get_num_threads() == 2
    with torch_threads(None):
        assert torch.get_num_threads() == 2


def test_a_small_head_gets_one_thread_and_backbone_work_keeps_the_cores(default_threads):
    assert user_threads() is None
    assert phase_threads(head_only=True, batch_size=16, width=1280) == 1
    assert phase_threads(head_only=False, batch_size=16, width=1280) is None  # fine-tune, partial caches
    assert phase_threads(head_only=True, batch_size=4096, width=4096) is None  # past the measured cut-over


@pytest.mark.parametrize("how", ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "set_num_threads"])
def test_a_thread_count_the_user_chose_is_left_alone(default_threads, monkeypatch, how):
    if how == "set_num_threads":
        torch.set_num_threads(3)
    else:
        monkeypatch.setenv(how, "2")
    assert user_threads() == (3 if how == "set_num_threads" else 2)
    assert phase_threads(head_only=True, batch_size=16, width=1280) is None


def test_a_rank_of_graft_train_nproc_plans_from_its_share(default_threads, monkeypatch):
    """The launcher's OMP_NUM_THREADS is each rank's share of the cores, not a user's choice."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv(runtime.LAUNCHER_THREADS, "1")
    torch.set_num_threads(1)
    assert user_threads() is None
    torch.set_num_threads(2)  # a rank that changed its own count afterwards: the user's
    assert user_threads() == 2


def test_the_head_phase_trains_under_one_thread_and_fine_tuning_under_the_default(
        default_threads, split_folder, tmp_path, monkeypatch):
    seen = []
    train_one_epoch = fit_module.train_one_epoch

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return train_one_epoch(*args, **kwargs)

    monkeypatch.setattr(fit_module, "train_one_epoch", recording)
    fit(TrainConfig(data_dir=split_folder, strategy="fine-tune", out_dir=tmp_path / "run",
                    cache_dir=tmp_path / "cache", **TINY))
    assert seen == [1, 2]  # head epoch on cached features, then the fine-tune epoch
    assert torch.get_num_threads() == 2


def test_backbone_epochs_get_the_cores_other_programs_leave_free(default_threads, monkeypatch):
    monkeypatch.setattr(runtime, "usable_cores", lambda: 2)
    assert phase_threads(head_only=False, batch_size=32, width=1280, others=0.3) is None  # quiet: every core
    assert phase_threads(head_only=False, batch_size=32, width=1280, others=1.2) == 1
    assert phase_threads(head_only=False, batch_size=32, width=1280, others=3.0) == 1  # at least one
    assert phase_threads(head_only=True, batch_size=16, width=1280, others=1.2) == 1  # the small head: one anyway
    monkeypatch.setattr(runtime, "usable_cores", lambda: 8)
    assert phase_threads(head_only=False, batch_size=32, width=1280, others=2.6) == 5
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's count stays, busy or not
    assert phase_threads(head_only=False, batch_size=32, width=1280, others=1.2) is None


def test_core_load_counts_other_programs_busy_time_not_this_process(monkeypatch):
    monkeypatch.delenv("GRAFTKIT_THREADS", raising=False)
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(runtime.os, "sysconf", lambda name: 100)
    stats = iter([(0, 0), (300, 100), (300, 100)])  # (busy ticks of cpu0 + cpu1, this process's CPU seconds x 100)
    clock = iter([10.0, 12.0, 12.0])
    readings = {}

    def read_text(self):
        busy, own = next(stats)
        readings["own"] = own / 100
        # cpu2 is not this process's: its 10,000 busy ticks do not count
        return (f"cpu  0 0 0 0 0 0 0 0\ncpu0 {busy // 2} 0 0 500 7 0 0 0\ncpu1 0 {busy - busy // 2} 0 500 3 0 0 0\n"
                "cpu2 10000 0 0 0 0 0 0 0\nintr 1\n")

    monkeypatch.setattr(runtime.Path, "read_text", read_text)
    monkeypatch.setattr(runtime.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(runtime.os, "times", lambda: runtime.os.times_result((readings["own"], 0, 0, 0, 0)))
    load = runtime.CoreLoad()
    assert load.others() == pytest.approx(1.0)  # 3 s busy over 2 s, 1 s of it this process's: one core
    monkeypatch.setenv("GRAFTKIT_THREADS", "fixed")
    assert runtime.CoreLoad().others() is None


def test_a_busy_machine_runs_fine_tune_epochs_on_the_free_cores_and_says_so(
        default_threads, split_folder, tmp_path, monkeypatch, capsys):
    seen = []
    train_one_epoch = fit_module.train_one_epoch
    monkeypatch.setattr(runtime, "usable_cores", lambda: 2)
    loads = iter([1.4, 0.1])  # a competitor during the first fine-tune epoch, gone before the second
    monkeypatch.setattr(runtime.CoreLoad, "others", lambda self: next(loads))

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return train_one_epoch(*args, **kwargs)

    monkeypatch.setattr(fit_module, "train_one_epoch", recording)
    run = fit(TrainConfig(data_dir=split_folder, strategy="fine-tune", out_dir=tmp_path / "run",
                          cache_dir=tmp_path / "cache", **{**TINY, "epochs": 3, "finetune_epochs": 2, "progress": "plain"}))
    assert seen == [1, 1, 2]
    assert [row["threads"] for row in run.history] == [1, 1, 2]
    out = capsys.readouterr().out + capsys.readouterr().err
    assert "kept 1.4 core(s) busy: 1 thread(s) from epoch 2" in out and "free again" in out


def _tune_openmp_in_a_fresh_process(env: dict[str, str], import_torch_first: bool = False) -> str:
    code = ("import os\n" + ("import torch\n" if import_torch_first else "")
            + "from graftkit.hardware import tune_openmp\nprint(tune_openmp(), os.environ.get('OMP_WAIT_POLICY'))")
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GRAFTKIT_OPENMP")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**clean, **env})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_openmp_wait_policy_is_set_before_torch_loads_only_when_asked():
    passive = {"GRAFTKIT_OPENMP": "passive"}
    assert _tune_openmp_in_a_fresh_process(passive) == "{'OMP_WAIT_POLICY': 'PASSIVE'} PASSIVE"
    assert _tune_openmp_in_a_fresh_process({**passive, "OMP_WAIT_POLICY": "ACTIVE"}) == "{} ACTIVE"
    assert _tune_openmp_in_a_fresh_process({}) == "{} None"  # off by default: it slows a quiet fine-tune
    assert _tune_openmp_in_a_fresh_process(passive, import_torch_first=True) == "{} None"  # too late: nothing set
