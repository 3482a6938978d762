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
