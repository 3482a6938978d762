"""graft train --time-limit / --backbone auto: probes on the inner split, the plan fits the budget,
plan.json and the report, the flags' errors and aliases."""
from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from graftkit import TrainConfig
from graftkit.data import scan_data
from graftkit.workflows import plan as planner
from graftkit.workflows.probe import (BackboneSpeed, CostModel, Schedule, estimate_training_seconds,
                                      probe_split)

from .conftest import graft, write_color_images


def _fake_measure(accuracy: dict[str, float], step_seconds: dict[str, float], seen: list, cached: int | None = None):
    """A stand-in for measure_backbone: accuracy and speed by backbone name; records what it was shown."""
    def measure(cfg, inner, steps_worth=None):
        seen.append((cfg.backbone, [s.path for s in inner.train], [s.path for s in inner.val]))
        step = step_seconds[cfg.backbone]
        # ``step``: a training step at the planned depth (half of the 4 stages frozen)
        speed = BackboneSpeed(cfg.backbone, 4, decode=0.0, forward=step / 3, prefix={1: step / 5, 2: step / 4},
                              train_step={1: 2 * step, 2: step}, tail_eval={1: step / 2, 2: step / 3})
        return {"name": cfg.backbone, "image_size": 32, "probe_accuracy": accuracy[cfg.backbone], "speed": speed,
                "seconds": 0.1, "pooled_cached": len(inner.train) + len(inner.val) if cached is None else cached}
    return measure


def _fake_train(calls: list):
    def train(cfg, scan=None):
        calls.append(cfg)
        return SimpleNamespace(config=cfg, out_dir=cfg.out_dir, metrics={"val_accuracy": 1.0})
    return train


@pytest.fixture
def two_tiny(monkeypatch):
    """Two candidate backbones for the planner (both tiny_cnn underneath, as far as fit is concerned)."""
    monkeypatch.setattr(planner, "AUTO_BACKBONES", ("tiny_cnn", "tiny_b"))


@pytest.fixture
def split_data(tmp_path):
    root = tmp_path / "data"
    for i, (name, rgb) in enumerate({"red": (210, 40, 40), "blue": (40, 40, 210)}.items()):
        write_color_images(root / "train" / name, rgb, 10, seed=i)
        write_color_images(root / "val" / name, rgb, 4, seed=10 + i)
    return root


def test_backbone_auto_chooses_by_probe_accuracy_on_the_inner_split_and_keeps_the_default_schedule(
        split_data, tmp_path, two_tiny):
    seen, calls = [], []
    cfg = TrainConfig(data_dir=split_data, out_dir=tmp_path / "run", device="cpu", progress="none")
    planner.train_planned(cfg, time_limit=None, started=time.monotonic(), auto_backbone=True,
                          measure=_fake_measure({"tiny_cnn": 0.6, "tiny_b": 0.9}, {"tiny_cnn": 1e-3, "tiny_b": 1e-3},
                                                seen), train=_fake_train(calls))
    val = {p for p in (split_data / "val").rglob("*.png")}
    assert [name for name, _, _ in seen] == ["tiny_cnn", "tiny_b"]
    for _, train_paths, val_paths in seen:  # the probes saw train images only, split again
        assert not val & set(train_paths) and not val & set(val_paths) and val_paths
        assert not set(train_paths) & set(val_paths)
    run_cfg = calls[0]
    assert run_cfg.backbone == "tiny_b"
    assert (run_cfg.head_epochs, run_cfg.finetune_epochs, run_cfg.freeze, run_cfg.lr) == (2, 4, 0, 3e-3)  # defaults
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert [c["backbone"] for c in plan["candidates"]] == ["tiny_cnn", "tiny_b"]
    assert [c["chosen"] for c in plan["candidates"]] == [False, True]
    assert plan["chosen"]["backbone"] == "tiny_b" and "0.900" in plan["reason"]


def test_a_probe_tie_goes_to_the_faster_backbone(split_data, tmp_path, two_tiny):
    seen, calls = [], []
    cfg = TrainConfig(data_dir=split_data, out_dir=tmp_path / "run", device="cpu", progress="none")
    planner.train_planned(cfg, time_limit=None, started=time.monotonic(), auto_backbone=True,
                          measure=_fake_measure({"tiny_cnn": 0.80, "tiny_b": 0.805}, {"tiny_cnn": 1e-3, "tiny_b": 5e-3},
                                                seen), train=_fake_train(calls))
    assert calls[0].backbone == "tiny_cnn"
    assert "cheapest run wins" in json.loads((tmp_path / "run" / "plan.json").read_text())["reason"]


def test_a_tie_is_broken_by_the_predicted_run_not_by_one_forward_pass(split_data, tmp_path, two_tiny):
    """A backbone whose forward pass measured a little faster but whose training steps cost more (lite1
    against lite0 on an AMX CPU) is not the cheaper run."""
    seen, calls = [], []
    plain = _fake_measure({"tiny_cnn": 0.80, "tiny_b": 0.805}, {"tiny_cnn": 1e-3, "tiny_b": 3e-3}, seen)

    def measure(cfg, inner, steps_worth=None):
        m = plain(cfg, inner, steps_worth)
        if cfg.backbone == "tiny_b":  # its forward pass timed faster than tiny_cnn's (1e-3 / 3)
            m["speed"].forward = 2e-4
        return m

    cfg = TrainConfig(data_dir=split_data, out_dir=tmp_path / "run", device="cpu", progress="none")
    planner.train_planned(cfg, time_limit=None, started=time.monotonic(), auto_backbone=True, measure=measure,
                          train=_fake_train(calls))
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    predicted = {c["backbone"]: c["predicted_seconds"] for c in plan["candidates"]}
    assert predicted["tiny_cnn"] < predicted["tiny_b"]
    assert calls[0].backbone == "tiny_cnn" and "cheapest run wins" in plan["reason"]


def _plan(split_data, tmp_path, limit: float, seen: list):
    cfg = TrainConfig(data_dir=split_data, out_dir=tmp_path / f"run{limit:g}", device="cpu", progress="none")
    scan = scan_data(split_data, 0.2, 0)
    return planner.make_plan(cfg, scan, time_limit=limit, started=time.monotonic(), auto_backbone=True, fixed=set(),
                             say=lambda line: None,
                             measure=_fake_measure({"tiny_cnn": 0.7, "tiny_b": 0.9}, {"tiny_cnn": 0.5, "tiny_b": 2.0},
                                                   seen))


def test_the_plan_fits_the_budget_a_tiny_budget_gets_a_cheaper_plan(split_data, tmp_path, two_tiny):
    small_cfg, small, small_scan = _plan(split_data, tmp_path, 60.0, [])
    large_cfg, large, _ = _plan(split_data, tmp_path, 3600.0, [])
    # large: the better probe and the richest schedule; small: what fits 60 s
    assert large_cfg.backbone == "tiny_b" and (large_cfg.finetune_epochs, large_cfg.freeze) == (8, 2)  # half of 4 stages frozen
    assert large_cfg.finetune_lr == planner.PLANNED_SETTINGS["finetune_lr"]
    assert large_cfg.augment == small_cfg.augment == planner.PLANNED_AUGMENT == "none"  # clean crops, prefix cached
    assert large["chosen"]["settings"]["augment"] == "none"
    assert small["chosen"]["predicted_seconds"] <= small["available_seconds"] < large["chosen"]["predicted_seconds"]
    assert small_cfg.total_epochs < large_cfg.total_epochs or small_cfg.backbone != large_cfg.backbone
    assert small_cfg.max_seconds < small["available_seconds"] and large_cfg.max_seconds > small_cfg.max_seconds
    assert all("predicted_seconds" in c and "ms_per_image" in c for c in small["candidates"])
    assert len(small_scan.train) == 20 and small_cfg.split_file is None  # it fits: all training images


def test_a_given_augment_wins_over_the_planned_clean_crops_and_costs_its_prefix_every_epoch(split_data, tmp_path):
    scan = scan_data(split_data, 0.2, 0)
    measure = _fake_measure({"tiny_cnn": 0.7}, {"tiny_cnn": 0.5}, [])
    plans = {}
    for augment, fixed in (("light", set()), ("strong", {"augment"})):
        cfg = TrainConfig(data_dir=split_data, out_dir=tmp_path / augment, device="cpu", progress="none",
                          backbone="tiny_cnn", augment=augment)
        plans[augment] = planner.make_plan(cfg, scan, time_limit=3600.0, started=time.monotonic(), auto_backbone=False,
                                           fixed=fixed, say=lambda line: None, measure=measure)
    assert plans["light"][0].augment == "none" and plans["strong"][0].augment == "strong"
    same_schedule = plans["light"][1]["chosen"]["schedule"] == plans["strong"][1]["chosen"]["schedule"]
    assert same_schedule and "freeze 2" in plans["strong"][1]["chosen"]["schedule"]
    assert plans["strong"][1]["chosen"]["predicted_seconds"] > plans["light"][1]["chosen"]["predicted_seconds"]


def test_when_nothing_fits_a_stratified_subset_of_train_does_and_val_stays_whole(split_data, tmp_path):
    cfg = TrainConfig(data_dir=split_data, out_dir=tmp_path / "run", device="cpu", progress="none", backbone="tiny_cnn")
    scan = scan_data(split_data, 0.2, 0)
    run_cfg, plan, run_scan = planner.make_plan(
        cfg, scan, time_limit=60.0, started=time.monotonic(), auto_backbone=False, fixed=set(), say=lambda line: None,
        measure=_fake_measure({"tiny_cnn": 0.7}, {"tiny_cnn": 4.5}, [], cached=0))  # 1.5 s a forward pass
    assert 10 <= len(run_scan.train) < len(scan.train) and run_scan.val == scan.val
    assert sorted({s.label for s in run_scan.train}) == [0, 1]
    assert run_cfg.split_file == (tmp_path / "run" / planner.SUBSET_NAME).resolve()
    assert plan["num_train"] == len(run_scan.train) and "training images" in plan["reason"]
    assert plan["chosen"]["predicted_seconds"] <= plan["available_seconds"]


def test_flags_given_with_a_time_limit_stay(split_data, tmp_path, two_tiny):
    cfg = TrainConfig(data_dir=split_data, out_dir=tmp_path / "run", device="cpu", progress="none",
                      backbone="tiny_cnn", finetune_epochs=3, freeze=2)
    run_cfg, plan, _ = planner.make_plan(cfg, scan_data(split_data, 0.2, 0), time_limit=3600.0, started=time.monotonic(),
                                      auto_backbone=False, fixed={"finetune_epochs", "freeze"}, say=lambda line: None,
                                      measure=_fake_measure({"tiny_cnn": 0.7}, {"tiny_cnn": 0.01}, []))
    assert (run_cfg.finetune_epochs, run_cfg.freeze, run_cfg.backbone) == (3, 2, "tiny_cnn")
    assert [c["backbone"] for c in plan["candidates"]] == ["tiny_cnn"] and run_cfg.max_seconds is not None


def test_probes_that_the_budget_cannot_afford_are_skipped_and_said(split_data, monkeypatch):
    monkeypatch.setattr(planner, "AUTO_BACKBONES", ("tiny_cnn", "tiny_b"))
    cfg = TrainConfig(data_dir=split_data, device="cpu", progress="none")

    def slow(cfg, inner, steps_worth=None):
        row = _fake_measure({cfg.backbone: 0.5}, {cfg.backbone: 0.01}, [])(cfg, inner)
        return {**row, "seconds": 30.0}

    inner = probe_split(scan_data(split_data, 0.2, 0), 0)
    rows = planner.probe_backbones(cfg, inner, ("tiny_cnn", "tiny_b"), 100.0, lambda line: None, slow)
    assert rows[0]["probe_accuracy"] == 0.5 and rows[1]["probe_accuracy"] is None and "20%" in rows[1]["skipped"]


def test_probe_split_subsamples_large_data_stratified(tmp_path):
    root = tmp_path / "big"
    write_color_images(root / "a", (200, 0, 0), 60, size=8)
    write_color_images(root / "b", (0, 0, 200), 20, size=8)
    scan = scan_data(root, 0.2, 0)
    inner = probe_split(scan, 0, max_images=40)
    assert len(inner.train) + len(inner.val) == 40
    assert {s.path for s in [*inner.train, *inner.val]} <= {s.path for s in scan.train}
    assert sum(s.label == 0 for s in [*inner.train, *inner.val]) == 30  # the class shares stay


def test_planned_fine_tunes_freeze_the_first_half_of_the_stages_then_deeper_with_fewer_epochs():
    ladder = planner.schedule_ladder(7)  # EfficientNet-Lite's 7 stages
    fine_tunes = [(s.finetune_epochs, s.freeze) for s in ladder if s.strategy == "fine-tune"]
    assert fine_tunes == [(8, 3), (6, 3), (5, 3), (4, 3), (3, 3), (3, 5), (2, 6), (1, 6)]
    assert planner.member_schedule({"num_stages": 7}, 6) == planner.Schedule("fine-tune", 2, 6, 3)
    assert [s.freeze for s in planner.schedule_ladder(2) if s.strategy == "fine-tune"] == [1] * 7


def test_cost_model_and_the_estimate_for_the_sweep():
    speed = BackboneSpeed("tiny_cnn", 4, decode=0.01, forward=0.02, prefix={1: 0.005}, train_step={1: 0.1},
                          tail_eval={1: 0.03})
    cost = CostModel({"tiny_cnn": speed}, fixed=0.0, head_epoch_per_image=0.0)
    schedule = Schedule("fine-tune", 2, 3, 1)
    # the frozen prefix once (cached: fixed views), then three epochs of the rest
    expected = 120 * 0.01 + 120 * 0.02 + 120 * 0.005 + 3 * (100 * 0.1 + 20 * 0.03) + 100 * 0.02 + 20 * 0.02
    assert cost.seconds("tiny_cnn", schedule, 100, 20, cached_prefix=True) == pytest.approx(expected)
    cfg = TrainConfig(data_dir="x", backbone="tiny_cnn", head_epochs=2, finetune_epochs=3, freeze=1, augment="none")
    assert estimate_training_seconds(cost, cfg, 100, 20) == pytest.approx(expected)
    # augmented afresh every epoch (the default): the prefix runs in each of the three epochs
    augmented = expected + 2 * 120 * 0.005
    assert cost.seconds("tiny_cnn", schedule, 100, 20) == pytest.approx(augmented)
    assert estimate_training_seconds(cost, cfg.replace(augment="light"), 100, 20) == pytest.approx(augmented)
    assert cost.epoch_seconds("tiny_cnn", schedule, 100, 20) == pytest.approx(100 * 0.1 + 20 * 0.03 + 120 * 0.005)
    assert cost.seconds("tiny_cnn", Schedule("feature-extraction", 10), 100, 20) < expected


@pytest.mark.parametrize("limit", [("--time-limit", "10m"), ("--max-seconds", "600")])  # the older spelling
def test_graft_train_time_limit_writes_plan_json_and_the_report_shows_it(split_data, tmp_path, limit):
    out = tmp_path / "run"
    result = graft("train", str(split_data), *limit, "--backbone", "tiny_cnn", "--device", "cpu",
                   "--batch-size", "8", "--out", str(out), "--plain")
    assert result.returncode == 0, result.stderr
    assert "plan: tiny_cnn, fine-tune 2 head + 8 epochs" in result.stdout
    plan = json.loads((out / "plan.json").read_text())
    assert plan["time_limit_seconds"] == 600 and plan["chosen"]["backbone"] == "tiny_cnn"
    assert plan["candidates"][0]["chosen"] and plan["candidates"][0]["probe_accuracy"] is not None
    config = json.loads((out / "config.json").read_text())
    assert config["finetune_epochs"] == 8 and config["freeze"] == 2 and 0 < config["max_seconds"] < 600
    assert graft("report", str(out), "--gradcam", "0").returncode == 0
    html = (out / "report.html").read_text()
    assert "Plan: backbone and schedule chosen by measurement" in html and "probe accuracy" in html


@pytest.mark.parametrize("value", ["ten minutes", "0s", "5x"])
def test_time_limit_parse_errors_are_one_line_exit_2(split_data, value):
    result = graft("train", str(split_data), "--time-limit", value, "--backbone", "tiny_cnn")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--time-limit" in result.stderr


def test_time_limit_refuses_max_seconds_and_other_workflows(split_data):
    both = graft("train", str(split_data), "--time-limit", "1m", "--max-seconds", "30")
    assert both.returncode == 2 and "--max-seconds is the older spelling of --time-limit" in both.stderr
    assert graft("train", str(split_data), "--max-seconds", "0").returncode == 2
    auto_freeze = graft("train", str(split_data), "--time-limit", "1m", "--freeze", "auto")
    assert auto_freeze.returncode == 2 and "one run in one process" in auto_freeze.stderr


def test_compare_time_limit_is_budget_minutes(split_data, tmp_path):
    both = graft("compare", str(split_data), "--out", str(tmp_path / "c0"), "--time-limit", "1m",
                 "--budget-minutes", "1")
    assert both.returncode == 2 and "older spelling" in both.stderr
    bad = graft("compare", str(split_data), "--out", str(tmp_path / "c1"), "--time-limit", "soon")
    assert bad.returncode == 2 and "--time-limit" in bad.stderr
    result = graft("compare", str(split_data), "--out", str(tmp_path / "c"), "--strategies", "feature-extraction",
                   "--seeds", "1", "--budget-epochs", "3", "--time-limit", "0.001s", "--backbone", "tiny_cnn",
                   "--image-size", "32", "--batch-size", "8", "--device", "cpu", "--no-isolate", "--no-report",
                   "--quiet")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "c" / "feature-extraction" / "seed0" / "metrics.json").read_text())
    assert metrics["stopped_early"]["reason"] == "max_seconds" and metrics["stopped_early"]["after_epoch"] == 1


def test_measure_backbone_on_the_tiny_backbone_times_steps_only_when_worth_it(split_data):
    from graftkit.workflows.probe import measure_backbone

    cfg = TrainConfig(data_dir=split_data, backbone="tiny_cnn", device="cpu", progress="none")
    inner = probe_split(scan_data(split_data, 0.2, 0), 0)
    timed = measure_backbone(cfg, inner)
    estimated = measure_backbone(cfg, inner, steps_worth=lambda forward: False)
    assert timed["steps_timed"] and not estimated["steps_timed"]
    assert 0 <= timed["probe_accuracy"] <= 1 and timed["pooled_cached"] == 20
    speed = estimated["speed"]
    assert set(speed.train_step) == {1, 2} and speed.train_step[1] == pytest.approx(3 * speed.forward * 3 / 4)
    assert set(timed["speed"].train_step) == {1, 2} and all(v > 0 for v in timed["speed"].train_step.values())


def test_a_limit_that_affords_two_backbones_plans_both_to_be_joined(split_data, tmp_path, two_tiny):
    scan = scan_data(split_data, 0.2, 0)
    measure = _fake_measure({"tiny_cnn": 0.7, "tiny_b": 0.9}, {"tiny_cnn": 0.5, "tiny_b": 2.0}, [])

    def plan(limit: float, ensemble: bool = True):
        cfg = TrainConfig(data_dir=split_data, out_dir=tmp_path / f"r{limit:g}{ensemble}", device="cpu",
                          progress="none")
        return planner.make_plan(cfg, scan, time_limit=limit, started=time.monotonic(), auto_backbone=True,
                                 fixed=set(), say=lambda line: None, measure=measure, ensemble=ensemble)

    run_cfg, roomy, _ = plan(3600.0)
    members = roomy["ensemble"]["members"]
    assert [m["backbone"] for m in members] == ["tiny_b", "tiny_cnn"]  # the best probe first, then the other
    assert all(m["settings"]["finetune_epochs"] == 8 and m["settings"]["freeze"] == 2 for m in members)
    assert [m["folder"] for m in members] == ["members/tiny_b", "members/tiny_cnn"]
    assert roomy["ensemble"]["predicted_seconds"] <= roomy["available_seconds"]
    assert sum(m["predicted_seconds"] for m in members) < roomy["ensemble"]["predicted_seconds"]  # + joining
    assert "joined into one model" in roomy["reason"] and run_cfg.backbone == "tiny_b"
    assert roomy["ensemble"]["planned_pace"] == planner.PLAN_PACE
    expected = f"({planner.PLAN_PACE * roomy['ensemble']['predicted_seconds']:.0f}s at the pace members have run at)"
    assert expected in planner.summary_line(roomy) and expected.strip("()") in roomy["reason"]
    # the first member stops in time for the second's shortest run at the planned pace, and the join
    shortest = members[1]["predicted_seconds"] - (8 - planner.MIN_MEMBER_FINETUNE_EPOCHS) * members[1]["epoch_seconds"]
    assert run_cfg.max_seconds < roomy["available_seconds"] - planner.PLAN_PACE * shortest - roomy["ensemble"]["join_seconds"]
    assert run_cfg.max_seconds > roomy["available_seconds"] - members[1]["predicted_seconds"]
    assert "ensemble" not in plan(3600.0, ensemble=False)[1]
    # one backbone affords fine-tune 2+8 but two cannot have 2+5 each: one backbone, as before
    single = planner.make_plan(
        TrainConfig(data_dir=split_data, out_dir=tmp_path / "one", device="cpu", progress="none"), scan,
        time_limit=3600.0, started=time.monotonic(), auto_backbone=True, fixed=set(), say=lambda line: None,
        measure=_fake_measure({"tiny_cnn": 0.7, "tiny_b": 0.9}, {"tiny_cnn": 28.0, "tiny_b": 14.0}, []))[1]
    # ... one backbone planned; the other joins only if the first runs faster than predicted
    assert single["chosen"]["ensemble"] == ["tiny_b"] and "fine-tune 2 head" in single["chosen"]["schedule"]
    assert [(m["backbone"], m["optional"]) for m in single["ensemble"]["members"]] == [("tiny_b", False),
                                                                                      ("tiny_cnn", True)]
    assert single["ensemble"]["predicted_seconds"] == single["chosen"]["predicted_seconds"]
    assert single["chosen"]["max_seconds"] > single["available_seconds"] - single["ensemble"]["members"][1]["predicted_seconds"]
    assert "tiny_b, fine-tune 2 head + 8" in planner.summary_line(single)
    assert "then tiny_cnn if time allows" in planner.summary_line(single)


def test_a_backbone_that_did_not_fit_the_plan_joins_when_the_planned_one_ran_fast(split_data, tmp_path, two_tiny,
                                                                                  monkeypatch):
    scan = scan_data(split_data, 0.2, 0)
    measure = _fake_measure({"tiny_cnn": 0.7, "tiny_b": 0.9}, {"tiny_cnn": 28.0, "tiny_b": 14.0}, [])
    joined = []
    monkeypatch.setattr("graftkit.workflows.ensemble.ensemble_runs",
                        lambda runs, out, **kw: joined.append(list(runs)) or {"val_accuracy": 0.5})
    monkeypatch.setattr("graftkit.engine.checkpoint.load_model", lambda path: (None, {}))

    def run_with(share: float, name: str):
        cfg = TrainConfig(data_dir=split_data, out_dir=tmp_path / name, device="cpu", progress="none")
        clock = {"now": 0.0}
        monkeypatch.setattr(planner.time, "monotonic", lambda: clock["now"])
        run_cfg, plan_json, _ = planner.make_plan(cfg, scan, time_limit=3600.0, started=0.0, auto_backbone=True,
                                                  fixed=set(), say=lambda line: None, measure=measure)
        infos = {m["backbone"]: m for m in plan_json["ensemble"]["members"]}
        trained, lines = [], []

        def train(cfg, scan=None):
            trained.append((cfg.backbone, cfg.finetune_epochs))
            clock["now"] += share * infos[cfg.backbone]["predicted_seconds"]
            Path(cfg.out_dir).mkdir(parents=True)
            (Path(cfg.out_dir) / "metrics.json").write_text("{}")
            return SimpleNamespace(config=cfg, out_dir=cfg.out_dir, metrics={"val_accuracy": 1.0}, classes=["a", "b"],
                                   history=[], model=None)

        run_cfg.out_dir.mkdir()
        planner.train_members(run_cfg, plan_json, scan, time_limit=3600.0, started=0.0, train=train, say=lines.append)
        return trained, lines, run_cfg.out_dir

    trained, lines, out = run_with(1.0, "as-predicted")  # no time for the second: the first alone, copied
    assert trained == [("tiny_b", 8)] and not joined and (out / "metrics.json").exists()
    assert any("tiny_cnn does not fit after all" in line for line in lines)
    trained, lines, out = run_with(0.3, "fast")  # the first took 0.5x (the pace's floor): the second joins
    assert [name for name, _ in trained] == ["tiny_b", "tiny_cnn"] and trained[1][1] >= 5
    assert joined == [[out / "members" / "tiny_b", out / "members" / "tiny_cnn"]]


def test_more_members_come_first_then_more_epochs_and_a_late_member_is_skipped(split_data, tmp_path, monkeypatch):
    monkeypatch.setattr(planner, "AUTO_BACKBONES", ("tiny_cnn", "tiny_b", "tiny_c"))
    scan = scan_data(split_data, 0.2, 0)
    measure = _fake_measure({"tiny_cnn": 0.8, "tiny_b": 0.9, "tiny_c": 0.85}, {"tiny_cnn": 1.0, "tiny_b": 1.0,
                                                                             "tiny_c": 1.0}, [])

    def plan(limit: float):
        cfg = TrainConfig(data_dir=split_data, out_dir=tmp_path / f"r{limit:g}", device="cpu", progress="none")
        return planner.make_plan(cfg, scan, time_limit=limit, started=time.monotonic(), auto_backbone=True,
                                 fixed=set(), say=lambda line: None, measure=measure)[1]

    roomy = plan(3600.0)["ensemble"]
    assert [m["backbone"] for m in roomy["members"]] == ["tiny_b", "tiny_cnn", "tiny_c"]
    assert all(m["settings"]["finetune_epochs"] == 8 for m in roomy["members"])
    # per member ~118 s at 2+4, ~140 s at 2+5, ~163 s at 2+6, ~186 s at 2+7, ~208 s at 2+8 (a training step:
    # 1 s per image), planned at PLAN_PACE (0.8): three fit 465 s available at 2+7 (0.8 x ~570 s with the join),
    # not at 2+8 (0.8 x ~640 s)
    tight = plan(500.0)["ensemble"]
    assert len(tight["members"]) == 3 and tight["members"][0]["settings"]["finetune_epochs"] == 7
    assert tight["predicted_seconds"] > plan(500.0)["available_seconds"] >= planner.PLAN_PACE * tight["predicted_seconds"]
    pair = plan(280.0)["ensemble"]  # 260 s: three would need 0.8 x 366 s even at 2+4
    planned = [m for m in pair["members"] if not m["optional"]]
    assert len(planned) == 2 and planner.PLAN_PACE * pair["predicted_seconds"] <= plan(280.0)["available_seconds"]
    optional = [m["backbone"] for m in pair["members"] if m["optional"]]  # the third joins if time allows
    assert len(optional) == 1 and optional[0] not in [m["backbone"] for m in planned]

    # training: the second member ran late, so the third no longer fits and is skipped; two are joined
    trained, joined = [], []
    monkeypatch.setattr("graftkit.workflows.ensemble.ensemble_runs",
                        lambda runs, out, **kw: joined.append(list(runs)) or {"val_accuracy": 0.5})
    monkeypatch.setattr("graftkit.engine.checkpoint.load_model", lambda path: (None, {}))
    plan_json = plan(3600.0)
    roomy = plan_json["ensemble"]
    clock = {"now": 0.0}
    monkeypatch.setattr(planner.time, "monotonic", lambda: clock["now"])

    def train(cfg, scan=None):
        trained.append(cfg.backbone)
        clock["now"] += 3200.0 if len(trained) == 2 else 10.0  # the second member takes far longer than planned
        return SimpleNamespace(config=cfg, out_dir=cfg.out_dir, metrics={"val_accuracy": 1.0}, classes=["a", "b"],
                               history=[], model=None)

    cfg = TrainConfig(data_dir=split_data, out_dir=tmp_path / "r3600", device="cpu", progress="none",
                      backbone="tiny_b")
    cfg.out_dir.mkdir()
    lines = []
    planner.train_members(cfg, plan_json, scan, time_limit=3600.0, started=0.0, train=train, say=lines.append)
    assert trained == ["tiny_b", "tiny_cnn"] and len(joined[0]) == 2
    assert any("tiny_c no longer fits" in line for line in lines)
    recorded = json.loads((cfg.out_dir / "plan.json").read_text())["ensemble"]["trained"]
    assert [(t["backbone"], t["seconds"]) for t in recorded] == [("tiny_b", 10.0), ("tiny_cnn", 3200.0)]


def test_later_members_fine_tune_longer_or_shorter_as_the_measured_pace_affords(split_data, tmp_path, monkeypatch):
    monkeypatch.setattr(planner, "AUTO_BACKBONES", ("tiny_cnn", "tiny_b", "tiny_c"))
    scan = scan_data(split_data, 0.2, 0)
    measure = _fake_measure({"tiny_cnn": 0.8, "tiny_b": 0.9, "tiny_c": 0.85}, {"tiny_cnn": 1.0, "tiny_b": 1.0,
                                                                             "tiny_c": 1.0}, [])
    cfg = TrainConfig(data_dir=split_data, out_dir=tmp_path / "run", device="cpu", progress="none")
    run_cfg, plan_json, _ = planner.make_plan(cfg, scan, time_limit=500.0, started=time.monotonic(), auto_backbone=True,
                                              fixed=set(), say=lambda line: None, measure=measure)
    members = plan_json["ensemble"]["members"]
    assert len(members) == 3 and all(m["settings"]["finetune_epochs"] == 7 for m in members)  # at PLAN_PACE
    monkeypatch.setattr("graftkit.workflows.ensemble.ensemble_runs", lambda runs, out, **kw: {"val_accuracy": 0.5})
    monkeypatch.setattr("graftkit.engine.checkpoint.load_model", lambda path: (None, {}))

    def run_with(share: float):
        """Train the plan with each member taking ``share`` of its predicted seconds."""
        clock, given = {"now": plan_json["seconds_before_plan"]}, []
        monkeypatch.setattr(planner.time, "monotonic", lambda: clock["now"])

        def train(cfg, scan=None):
            info = next(m for m in members if m["backbone"] == cfg.backbone)
            clock["now"] += share * planner.member_seconds(info, cfg.finetune_epochs)
            given.append((cfg.backbone, cfg.finetune_epochs, cfg.max_seconds))
            Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
            return SimpleNamespace(config=cfg, out_dir=cfg.out_dir, metrics={"val_accuracy": 1.0}, classes=["a", "b"],
                                   history=[], model=None)

        lines = []
        planner.train_members(run_cfg, plan_json, scan, time_limit=500.0, started=0.0, train=train, say=lines.append)
        return given, lines, clock["now"]

    run_cfg.out_dir.mkdir()
    limit = 500.0 * planner.TARGET_FRACTION - plan_json["reserve_seconds"]
    expected, _, ended = run_with(planner.PLAN_PACE)  # the pace the plan expects: about the planned epochs
    assert [g[1] for g in expected][0] == 7 and 20 <= sum(g[1] for g in expected) <= 23 and ended <= limit
    slow, lines, ended = run_with(1.0)  # the cost model was right: the later members fine-tune fewer epochs
    assert slow[0][1] == 7 and [g[0] for g in slow] == ["tiny_b", "tiny_cnn", "tiny_c"]
    assert all(planner.MIN_MEMBER_FINETUNE_EPOCHS <= epochs for _, epochs, _ in slow)
    assert sum(g[1] for g in slow) < 21 and ended <= limit  # all three, inside the limit
    assert abs(slow[1][1] - slow[2][1]) <= 1  # the second left the third a fair share, not only its shortest run
    assert any("took 1.00x their predicted time: tiny_cnn fine-tunes" in line and "instead of 7" in line
               for line in lines)
    fast, lines, ended = run_with(0.5)  # twice as fast as predicted: the later members fine-tune longer
    assert fast[0][1] == 7 and all(on < epochs <= planner.MAX_FINETUNE_EPOCHS
                                   for (_, epochs, _), (_, on, _) in zip(fast[1:], slow[1:]))
    assert any("took 0.50x their predicted time: tiny_cnn fine-tunes" in line for line in lines)
    assert ended <= limit  # still inside the limit
    trained = json.loads((run_cfg.out_dir / "plan.json").read_text())["ensemble"]["trained"]
    assert [t["finetune_epochs"] for t in trained] == [g[1] for g in fast]
    late, lines, ended = run_with(1.6)  # far slower: a later member's shortest run no longer fits
    assert len(late) < 3 and any("no longer fits" in line and "for 2+3, and an epoch more to spare within the limit" in line
                                 for line in lines)


def test_graft_train_time_limit_joins_two_backbones_into_one_model_that_predicts(split_data, tmp_path, two_tiny,
                                                                                 monkeypatch):
    from graftkit.backbones import registry
    from graftkit.backbones.tiny import tiny_cnn

    info = registry.registered("tiny_cnn")
    monkeypatch.setitem(registry._REGISTRY, "tiny_b", registry.BackboneInfo(
        "tiny_b", lambda pretrained=True, weights=None: _renamed(tiny_cnn(pretrained, weights), "tiny_b"),
        True, "a second tiny backbone", info.image_size))
    out = tmp_path / "run"
    result = graft("train", str(split_data), "--time-limit", "10m", "--device", "cpu", "--batch-size", "8",
                   "--out", str(out), "--plain")
    assert result.returncode == 0, result.stderr
    plan = json.loads((out / "plan.json").read_text())
    names = [m["backbone"] for m in plan["ensemble"]["members"]]
    assert sorted(names) == ["tiny_b", "tiny_cnn"] and "joined" in result.stdout
    for name in names:  # each member is a whole run of its own
        assert json.loads((out / "members" / name / "model.json").read_text())["backbone"] == name
    joined = json.loads((out / "model.json").read_text())
    assert joined["backbone"] == "+".join(f"{n}@{info.image_size}" for n in names)
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["backbone"] for m in metrics["members"]] == names
    image = next((split_data / "val").rglob("*.png"))
    assert graft("predict", str(out), str(image)).returncode == 0
    single = graft("train", str(split_data), "--time-limit", "10m", "--no-ensemble", "--device", "cpu",
                   "--batch-size", "8", "--out", str(tmp_path / "single"), "--plain")
    assert single.returncode == 0 and not (tmp_path / "single" / "members").exists()
    refused = graft("train", str(split_data), "--no-ensemble", "--out", str(tmp_path / "x"))
    assert refused.returncode == 2 and "--time-limit" in refused.stderr


def _renamed(backbone, name):
    backbone.name = name
    return backbone


def test_a_re_planned_member_fits_the_target_keeps_one_epoch_to_spare_within_the_limit_and_a_minimum():
    info = {"settings": {"finetune_epochs": 5}, "predicted_seconds": 100.0, "epoch_seconds": 10.0}
    assert planner.member_epochs(info, 1.0, 120.0, 10.0) == 7  # 2 more epochs: 120 s, the spare one in the margin
    assert planner.member_epochs(info, 1.0, 120.0, 9.0) == 6  # a margin short of an epoch: the spare one in the target
    assert planner.member_epochs(info, 1.0, 119.0, 50.0) == 6  # 7 would pass the target, however wide the margin
    assert planner.member_epochs(info, 1.0, 109.0) == 4  # no margin: the planned 5 would leave no epoch to spare
    assert planner.member_epochs(info, 0.5, 100.0) == planner.MAX_FINETUNE_EPOCHS
    assert planner.member_epochs(info, 1.0, 80.0, 10.0) == planner.MIN_MEMBER_FINETUNE_EPOCHS  # 80 s + 10 spare
    assert planner.member_epochs(info, 1.0, 79.0, 100.0) is None  # not even the fewest fit
    # with a later member: as many epochs as both can have (2 x 100 s at 2+5), not this one's most
    assert planner.member_epochs(info, 1.0, 200.0, 10.0, later=[info]) == 5
    assert planner.member_epochs(info, 1.0, 200.0, 10.0) == planner.MAX_FINETUNE_EPOCHS
    head_only = {**info, "settings": {}}
    assert planner.member_epochs(head_only, 0.5, 1000.0) == 0 and planner.member_epochs(head_only, 1.0, 99.0) is None
