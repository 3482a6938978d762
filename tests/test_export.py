"""graft export (ONNX, TorchScript, int8 ONNX) and graft predict on an exported .onnx, without torch."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import graft, write_color_images

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(session_run, tmp_path_factory) -> Path:
    """The session run exported to ONNX once (checked on its val split)."""
    from graftkit.export import export_model

    out = tmp_path_factory.mktemp("exported") / "tiny.onnx"
    export_model(session_run, "onnx", out)
    return out


def _val_dir(run: Path) -> Path:
    return Path(json.loads((run / "config.json").read_text())["data_dir"]) / "val"


def test_onnx_export_carries_classes_preprocessing_and_check(session_run, exported):
    meta = json.loads((session_run / "model.json").read_text())
    model = onnx.load(str(exported))
    embedded = json.loads({p.key: p.value for p in model.metadata_props}["graftkit"])
    sidecar = json.loads(Path(f"{exported}.json").read_text())
    for info in (embedded, sidecar):
        assert info["classes"] == meta["classes"] and info["backbone"] == "tiny_cnn"
        assert info["preprocessing"]["image_size"] == 32 and info["preprocessing"]["resize"] == 37
        assert info["preprocessing"]["mean"] == meta["preprocessing"]["mean"]
        assert info["calibration"]["temperature"] == meta["calibration"]["temperature"]  # the run's fitted T
        assert info["input"]["fixed_size"] is True
    assert [o.name for o in model.graph.output] == ["logits", "features"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch is dynamic
    assert sidecar["check"]["images"] == 9 and sidecar["check"]["max_abs_logit_diff"] <= 1e-4
    assert "val images of" in sidecar["check"]["source"] and sidecar["check"]["top1_agreement"] == 1.0


def test_export_carries_the_calibration_temperature(session_run):
    from graftkit.export.api import export_metadata

    meta = json.loads((session_run / "model.json").read_text())
    assert export_metadata({**meta, "calibration": {"temperature": 1.7}}, "onnx", session_run)[
        "calibration"] == {"temperature": 1.7}


@pytest.mark.parametrize("fmt, name", [("torchscript", "m.torchscript.pt"), ("onnx-int8", "m.int8.onnx")])
def test_torchscript_and_int8_exports_are_checked_and_written(session_run, tmp_path, fmt, name):
    result = graft("export", str(session_run), "--format", fmt, "--out", str(tmp_path / name))
    assert result.returncode == 0, result.stderr
    assert "max abs logit difference" in result.stdout and "top-1 agreement" in result.stdout
    assert "fixed at 32x32" in result.stdout
    sidecar = json.loads((tmp_path / f"{name}.json").read_text())
    assert sidecar["format"] == fmt and sidecar["classes"] == ["blue", "green", "red"]
    if fmt == "torchscript":
        assert sidecar["check"]["max_abs_logit_diff"] <= 1e-4
    else:
        assert sidecar["check"]["top1_agreement"] >= 0.99 and "train images" in sidecar["int8"]["calibration_images"]
        quantized = onnx.load(str(tmp_path / name))
        assert any(n.op_type == "QuantizeLinear" for n in quantized.graph.node)
        assert json.loads({p.key: p.value for p in quantized.metadata_props}["graftkit"])["format"] == fmt
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, f"{name}.json"])  # no temp file left


def test_a_failed_check_is_an_error_and_leaves_no_file(session_run, tmp_path, monkeypatch):
    from graftkit.export import onnx as onnx_export

    real = onnx_export.onnx_runner

    def perturbed(path):
        run = real(path)
        return lambda inputs: (lambda out: (out[0] + 1e-3, out[1]))(run(inputs))

    monkeypatch.setattr(onnx_export, "onnx_runner", perturbed)
    result = graft("export", str(session_run), "--out", str(tmp_path / "m.onnx"))
    assert result.returncode == 2
    assert "disagrees with the PyTorch model" in result.stderr and "1.00e-03 > 1e-04" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_export_without_the_run_data_uses_check_images_or_warns(session_run, tmp_path, monkeypatch):
    from graftkit.export import check

    monkeypatch.setattr(check, "run_data_dir", lambda meta, folder: None)
    images = tmp_path / "images"
    write_color_images(images, (200, 30, 30), 3)
    given = graft("export", str(session_run), "--out", str(tmp_path / "a.onnx"), "--check-images", str(images))
    assert given.returncode == 0 and "checked on 3 images of" in given.stdout and "warning" not in given.stderr
    generated = graft("export", str(session_run), "--out", str(tmp_path / "b.onnx"))
    assert generated.returncode == 0 and "generated images" in generated.stdout
    assert "warning: the run's data is not readable here" in generated.stderr


def test_onnx_logits_match_pytorch_predict_from_the_same_files(session_run, exported):
    """numpy decoding + preprocessing + onnxruntime = the run folder's predict (torch transform), fp32."""
    import torch

    from graftkit.data import decode_square
    from graftkit.engine.checkpoint import load_model
    from graftkit.onnx_classifier import OnnxClassifier
    from graftkit.predict import ImageClassifier

    model, meta = load_model(session_run)
    torch_classifier = ImageClassifier(model, {**meta, "precision": "fp32"})
    onnx_classifier = OnnxClassifier(exported)
    files = sorted(_val_dir(session_run).rglob("*.png"))
    squares = np.stack([decode_square(f.read_bytes(), 37) for f in files])
    with torch.no_grad():
        inputs = torch.stack([torch_classifier.transform(torch.from_numpy(q).permute(2, 0, 1)) for q in squares])
        expected = model(inputs).numpy()
    assert np.abs(onnx_classifier.logits_squares(squares) - expected).max() <= 1e-4
    probs, features = onnx_classifier.outputs_for_squares(list(squares))
    with torch.no_grad():
        assert np.abs(features - model.backbone(inputs).numpy()).max() <= 1e-4
    calibrated = (torch.from_numpy(expected) / meta["calibration"]["temperature"]).softmax(1).numpy()
    assert np.abs(probs - calibrated).max() <= 1e-5  # both apply the run's temperature
    ours = onnx_classifier.predict(_val_dir(session_run), top_k=2)
    theirs = torch_classifier.predict(_val_dir(session_run), top_k=2)
    assert [p.path for p in ours] == [p.path for p in theirs] and [p.top[0][0] for p in ours] == [p.label for p in theirs]
    assert max(abs(a[1] - b[1]) for p, q in zip(ours, theirs) for a, b in zip(p.top, q.top)) <= 1e-5


def test_predict_on_onnx_does_not_import_torch(session_run, exported):
    code = ("import sys\nfrom graftkit.cli import main\n"
            f"sys.argv = ['graft', 'predict', {str(exported)!r}, {str(_val_dir(session_run))!r}, '--format', 'jsonl']\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code in (0, None), exc.code\n"
            "print('torch loaded:', 'torch' in sys.modules, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "torch loaded: False"
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 9 and {r["class"] for r in rows} <= {"blue", "green", "red"}


class _Recorder(io.StringIO):
    """Notes how many chunks had been predicted when each row was written."""

    def __init__(self, calls: list) -> None:
        super().__init__()
        self.calls, self.chunks_at_write = calls, []

    def write(self, text: str) -> int:
        self.chunks_at_write.append(len(self.calls))
        return super().write(text)


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl"])
def test_predict_streams_rows_and_skips_a_bad_file(exported, tmp_path, monkeypatch, fmt):
    from graftkit import cli_predict
    from graftkit.data import model_input
    from graftkit.onnx_classifier import OnnxClassifier

    folder = tmp_path / "many"
    write_color_images(folder, (40, 200, 40), 7)
    (folder / "003b.png").write_bytes(b"not an image")
    classifier = OnnxClassifier(exported)
    calls: list = []
    real = classifier.proba_squares
    monkeypatch.setattr(classifier, "proba_squares", lambda squares: calls.append(len(squares)) or real(squares))
    monkeypatch.setattr(model_input, "CHUNK_SIZE", 3)
    stream, skipped = _Recorder(calls), []
    rows = cli_predict.write_predictions(classifier.iter_predict(folder, on_skip=lambda p, r: skipped.append(p)),
                                         cli_predict.RowWriter(stream, fmt, 1))
    assert rows == 7 and sorted(calls) == [2, 2, 3] and skipped == [folder / "003b.png"]  # chunks of 3 files read
    assert stream.chunks_at_write[0] == 1  # the first rows were out before the second chunk ran
    text = stream.getvalue()
    parsed = (json.loads(text) if fmt == "json" else [json.loads(line) for line in text.splitlines()]
              if fmt == "jsonl" else text.splitlines()[1:])
    assert len(parsed) == 7


def test_predict_cli_lists_a_bad_file_and_goes_on(exported, tmp_path):
    folder = tmp_path / "imgs"
    write_color_images(folder, (40, 40, 200), 2)
    (folder / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    result = graft("predict", str(exported), str(folder), "--format", "csv")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 3 and f"skipped: {folder / 'bad.jpg'}" in result.stderr
    assert "1 file(s) skipped" in result.stderr


def test_a_foreign_onnx_or_a_torchscript_file_is_a_one_line_error(tmp_path, class_folder, monkeypatch):
    import torch

    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph), str(tmp_path / "foreign.onnx"))
    (tmp_path / "model.pt").write_bytes(b"PK\x03\x04 pretend TorchScript")
    loaded = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: loaded.append(a))
    for name, message in [("foreign.onnx", "was not exported by graftkit"), ("model.pt", "never loads TorchScript")]:
        result = graft("predict", str(tmp_path / name), str(class_folder))
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert loaded == []


def test_export_refuses_a_bad_format_or_out(session_run, tmp_path):
    assert "--format must be one of" in graft("export", str(session_run), "--format", "tflite").stderr
    result = graft("export", str(session_run), "--out", str(tmp_path / "m.pt"))
    assert result.returncode == 2 and "must end in .onnx" in result.stderr


def test_an_opset_below_18_is_written_as_asked(session_run, tmp_path):
    result = graft("export", str(session_run), "--opset", "17", "--out", str(tmp_path / "m.onnx"))
    assert result.returncode == 0, result.stderr
    assert [o.version for o in onnx.load(str(tmp_path / "m.onnx")).opset_import if o.domain in ("", "ai.onnx")] == [17]
