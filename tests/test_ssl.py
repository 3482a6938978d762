from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("lightly", reason="the [ssl] extra (lightly) is not installed")

from graftkit import ConfigError, create_backbone  # noqa: E402
from graftkit.ssl import PretrainConfig, pretrain_ssl  # noqa: E402

from .conftest import graft, invoke_graft, write_color_images  # noqa: E402


def nt_xent_from_the_paper(z_i: torch.Tensor, z_j: torch.Tensor, tau: float) -> torch.Tensor:
    """SimCLR (Chen et al. 2020), eq. 1, written out: for each of the 2N views k with positive p(k),
    l(k) = -log( exp(sim(z_k, z_p)/tau) / sum_{m != k} exp(sim(z_k, z_m)/tau) ), averaged over k."""
    z = torch.cat([z_i, z_j]).double()
    n = len(z_i)
    total = 0.0
    for k in range(2 * n):
        positive = (k + n) % (2 * n)
        sim = lambda a, b: torch.dot(z[a], z[b]) / (z[a].norm() * z[b].norm())  # noqa: E731
        denominator = sum(math.exp(sim(k, m) / tau) for m in range(2 * n) if m != k)
        total += -math.log(math.exp(sim(k, positive) / tau) / denominator)
    return torch.tensor(total / (2 * n))


def dino_from_the_paper(teacher: list[torch.Tensor], student: list[torch.Tensor], center: torch.Tensor,
                        tau_t: float, tau_s: float) -> torch.Tensor:
    """DINO (Caron et al. 2021), Algorithm 1: H(t, s) = -sum softmax((t - C)/tau_t) log softmax(s/tau_s),
    over every (teacher view, student view) pair of different views, averaged over pairs and the batch."""
    losses = []
    for a, t in enumerate(teacher):
        p_t = torch.softmax((t.double() - center.double()) / tau_t, dim=1)
        for b, s in enumerate(student):
            if a == b:
                continue
            losses.append(-(p_t * torch.log_softmax(s.double() / tau_s, dim=1)).sum(1).mean())
    return torch.stack(losses).mean()


def test_nt_xent_matches_the_paper_formula():
    from lightly.loss import NTXentLoss

    torch.manual_seed(0)
    for tau in (0.1, 0.5):
        z_i, z_j = torch.randn(6, 5), torch.randn(6, 5)
        ours = NTXentLoss(temperature=tau)(z_i, z_j)
        assert ours.item() == pytest.approx(nt_xent_from_the_paper(z_i, z_j, tau).item(), rel=1e-5)
    # identical views make the loss smaller than random ones
    z = torch.randn(6, 5)
    assert NTXentLoss(temperature=0.1)(z, z) < NTXentLoss(temperature=0.1)(z, torch.randn(6, 5))


def test_byol_loss_is_the_papers_normalised_mse():
    from lightly.loss import NegativeCosineSimilarity

    torch.manual_seed(1)
    p, z = torch.randn(8, 16), torch.randn(8, 16)
    # BYOL (Grill et al. 2020), eq. 2: || p/|p| - z/|z| ||^2 = 2 - 2 cos(p, z); lightly returns -cos
    paper = ((p / p.norm(dim=1, keepdim=True) - z / z.norm(dim=1, keepdim=True)) ** 2).sum(1).mean()
    assert (2 + 2 * NegativeCosineSimilarity()(p, z)).item() == pytest.approx(paper.item(), rel=1e-5)


def test_dino_loss_matches_the_paper_formula():
    from lightly.loss import DINOLoss

    torch.manual_seed(2)
    loss = DINOLoss(output_dim=7, warmup_teacher_temp=0.04, teacher_temp=0.04, student_temp=0.1)
    center = torch.randn(1, 7) * 0.1
    loss.center.data = center.clone()
    teacher = [torch.randn(4, 7) for _ in range(2)]
    student = [torch.randn(4, 7) for _ in range(4)]  # 2 global + 2 local views
    ours = loss(teacher, student, teacher_temp=0.04)
    assert ours.item() == pytest.approx(dino_from_the_paper(teacher, student, center, 0.04, 0.1).item(), rel=1e-5)


@pytest.fixture
def pile(tmp_path):
    for i, rgb in enumerate([(210, 40, 40), (40, 210, 40), (40, 40, 210)]):
        write_color_images(tmp_path / "pile" / f"sub{i}", rgb, 6, seed=i)
    return tmp_path / "pile"


@pytest.mark.parametrize("method", ["simclr", "byol", "dino"])
def test_pretrain_one_tiny_epoch_writes_loadable_weights(pile, split_folder, tmp_path, method):
    out = tmp_path / method
    probe_data = split_folder if method == "simclr" else None
    cfg = PretrainConfig(pile, out, method=method, backbone="tiny_cnn", epochs=1, image_size=32, batch_size=8,
                         device="cpu", probe_data=probe_data, probe_image_size=32)
    torch.manual_seed(0)
    initial = create_backbone("tiny_cnn").state_dict()
    summary = pretrain_ssl(cfg)
    saved = json.loads((out / "pretrain.json").read_text())
    assert saved["epochs_done"] == 1 and saved["steps"] == 2 and len(saved["loss_per_epoch"]) == 1
    assert math.isfinite(saved["loss_per_epoch"][0]) and saved["stopped_by"] == "epochs"
    if probe_data is not None:
        for when in ("before", "after"):
            assert 0 <= saved["probe"][when]["linear_accuracy"] <= 1 and saved["probe"][when]["num_val"] == 9
    loaded = create_backbone("tiny_cnn", weights=out / "backbone.safetensors")
    state = loaded.state_dict()
    assert all(k.startswith("stages.") for k in state) and loaded.pretrained
    assert any(not torch.equal(state[k], initial[k]) for k in state if state[k].is_floating_point())
    assert summary["weights"] == str(out / "backbone.safetensors")


def test_pretrain_stops_on_minutes_and_the_loss_falls(pile, tmp_path):
    cfg = PretrainConfig(pile, tmp_path / "short", method="simclr", backbone="tiny_cnn", epochs=50,
                         image_size=32, batch_size=6, device="cpu", minutes=0.0001)
    summary = pretrain_ssl(cfg)
    assert summary["stopped_by"] == "minutes" and summary["steps"] == 1 and summary["epochs_done"] == 1
    # one step per epoch over all 18 images, so epochs compare like with like
    falls = pretrain_ssl(PretrainConfig(pile, tmp_path / "falls", method="simclr", backbone="tiny_cnn",
                                        epochs=16, image_size=32, batch_size=18, lr=1e-2, backbone_lr=1e-2,
                                        train_bn=True, device="cpu"))
    losses = falls["loss_per_epoch"]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4


def test_pretrain_cli_and_bad_options(pile, tmp_path):
    result = invoke_graft("pretrain", str(pile), "--method", "byol", "--backbone", "tiny_cnn", "--epochs", "1",
                       "--image-size", "32", "--batch-size", "8", "--device", "cpu", "--out", str(tmp_path / "p"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p" / "backbone.safetensors").exists() and "epoch 1" in result.output
    bad = graft("pretrain", str(pile), "--method", "mae", "--out", str(tmp_path / "q"))
    assert bad.returncode == 2 and "method must be one of" in bad.stderr
    with pytest.raises(ConfigError, match="fewer than one batch"):
        pretrain_ssl(PretrainConfig(pile, tmp_path / "r", backbone="tiny_cnn", batch_size=64, device="cpu"))
