"""The model in your own code: paths, Pillow images, numpy arrays and tensors, one or a batch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import graftkit
from graftkit import ConfigError

from .conftest import graft


@pytest.fixture(scope="module")
def model_and_files(session_run):
    model = graftkit.load(session_run)
    files = sorted((model.trained_on() / "val").rglob("*.png"))
    return model, files


def test_predict_takes_pil_numpy_and_tensors_as_it_takes_files(model_and_files):
    model, files = model_and_files
    path = files[0]
    pil = Image.open(path)
    array = np.asarray(Image.open(path).convert("RGB"))
    as_uint8 = torch.from_numpy(array.copy()).permute(2, 0, 1)
    inputs = [path, pil, array, as_uint8, as_uint8.float() / 255]
    results = model.predict(inputs, top_k=2)
    assert [r.path for r in results] == [path, None, None, None, None]
    for r in results[1:]:
        assert r.label == results[0].label
        assert r.probability == pytest.approx(results[0].probability, abs=1e-6)
    single = model.predict(pil)  # one image, not a list
    assert len(single) == 1 and single[0].probability == pytest.approx(results[0].probability, abs=1e-6)
    batch = model.predict(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))  # (B, H, W, 3)
    assert [r.label for r in batch] == [r.label for r in model.predict(files)]


def test_logits_and_features_are_named_methods(model_and_files):
    model, files = model_and_files
    logits = model.logits(files[:3])
    assert logits.shape == (3, len(model.classes))
    probs = [r.probability for r in model.predict(files[:3])]
    # predict's probabilities are calibrated: softmax of the logits over the run's temperature
    assert (logits / model.temperature).softmax(1).max(1).values.tolist() == pytest.approx(probs, abs=1e-6)
    features = model.features([Image.open(f) for f in files[:3]])
    assert features.shape == (3, model.meta["num_features"])
    assert torch.allclose(model.model.head(features), logits, atol=1e-3)  # features in the run's precision (bf16 on some CPUs)


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32),
                                 torch.zeros(8, 8, 3, dtype=torch.uint8), torch.zeros(3, 8, 8, dtype=torch.int64)])
def test_predict_names_what_an_in_memory_image_must_be(model_and_files, bad):
    with pytest.raises(ConfigError, match=r"\(H, W, 3\)|\(3, H, W\)|uint8"):
        model_and_files[0].predict([bad])


def test_predict_cli_table_names_files_as_given_and_is_plain_when_piped(session_run, model_and_files, tmp_path):
    _, files = model_and_files
    folder = files[0].parent.parent  # .../val: class folders under it
    done = graft("predict", str(session_run), str(folder), "--top-k", "2", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["image", "top", "1", "top", "2"]
    names = [line.split()[0] for line in lines[1:]]
    assert sorted(names) == sorted(str(f.relative_to(folder)) for f in files)  # e.g. blue/000.png
    assert not any(ch in done.stdout for ch in "│┃━─╇") and "\x1b[" not in done.stdout
    assert all(len(line.split()) == 5 for line in lines[1:])  # name, then class + probability twice
    bad = graft("predict", str(session_run), str(folder), "--device", "tpu")
    assert bad.returncode == 2 and "--device" in bad.stderr
