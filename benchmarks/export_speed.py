"""Export speed: images/s of graftkit's PyTorch predict, onnxruntime fp32 and onnxruntime int8.

Exports the run's model (``graft export``'s code: checked against PyTorch as it is written) to ONNX
fp32 and int8 (QDQ, graftkit's format; QOperator too, for comparison), then times the forward pass
from decoded images (preprocessing included, decoding excluded: it is the same for every path) at
batch 1 and batch 32, on every core this process may use. The paths take turns round by round, so a
load that changes during the run hits them alike; the ratios are the figures to read.

    python benchmarks/export_speed.py RUN_DIR [--rounds 5] [--check-images DIR] [--reuse WORK_DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table  # noqa: E402


def ort_session(path: Path, threads: int):
    from graftkit.onnx_classifier import session_options

    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


def qoperator_copy(fp32: Path, out: Path, squares: np.ndarray, pre: dict) -> None:
    """The same static quantisation as graftkit's, in QOperator format (QLinearConv ...)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from graftkit.data.model_input import normalize_squares

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(range(0, len(squares), 16))

        def get_next(self):
            start = next(self.it, None)
            return None if start is None else {"input": normalize_squares(squares[start:start + 16], pre)}

    prepared = out.with_suffix(".prep.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QOperator, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    prepared.unlink()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--check-images", type=Path, default=None)
    parser.add_argument("--reuse", type=Path, default=None,
                        help="A work folder of an earlier run of this script: time its exports, do not re-export.")
    args = parser.parse_args()

    import torch

    from graftkit.data.model_input import normalize_squares
    from graftkit.engine.checkpoint import load_model
    from graftkit.export import export_model
    from graftkit.export.check import find_images
    from graftkit.hardware import usable_cores
    from graftkit.predict import ImageClassifier

    from graftkit.hardware import tune_cpu_allocator

    tune_cpu_allocator()  # as `graft predict` does for its own process
    cores = usable_cores()
    torch.set_num_threads(cores)
    print(machine())
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} · {cores} cores used · "
          f"torch {torch.__version__} · onnxruntime {__import__('onnxruntime').__version__}", flush=True)
    work = args.reuse or Path(tempfile.mkdtemp(prefix="graftkit-bench-export-"))
    exports = {"onnx": work / "fp32.onnx", "onnx-int8": work / "int8.onnx"}
    for fmt, path in exports.items():
        if args.reuse is None:
            export_model(args.run_dir, fmt, path, check_images=args.check_images, warn=print)
        check = json.loads(Path(f"{path}.json").read_text())["check"]
        print(f"{fmt}: {check['source']}: max abs logit diff {check['max_abs_logit_diff']:.2e}, top-1 agreement "
              f"{check['top1_agreement']:.2%}" + (f", accuracy {check['accuracy_export']:.2%} (PyTorch fp32 "
                                                   f"{check['accuracy_pytorch']:.2%})" if "accuracy_export" in check else ""),
              flush=True)
    model, meta = load_model(args.run_dir)
    pre = meta["preprocessing"]
    qoperator = work / "int8-qoperator.onnx"
    if args.reuse is None:
        calibration = find_images(meta, Path(args.run_dir), args.check_images, "train", print)
        qoperator_copy(exports["onnx"], qoperator, calibration.squares, pre)
    squares = find_images(meta, Path(args.run_dir), args.check_images, "val", print).squares
    squares = np.concatenate([squares] * (-(-64 // len(squares))))[:64]

    graftkit_predict = ImageClassifier(model, meta)  # as `graft predict RUN_DIR` runs it
    fp32_eager, _ = load_model(args.run_dir)
    fp32_transform = graftkit_predict.transform

    def torch_fp32(batch):
        with torch.no_grad():
            return fp32_eager(torch.stack([fp32_transform(torch.from_numpy(q).permute(2, 0, 1)) for q in batch]))

    sessions = {name: ort_session(path, cores) for name, path in
                [("onnxruntime fp32", exports["onnx"]), ("onnxruntime int8 (QDQ, graftkit)", exports["onnx-int8"]),
                 ("onnxruntime int8 (QOperator)", qoperator)]}
    paths = {f"graftkit PyTorch predict ({meta.get('precision', 'fp32')}, fold_bn {meta.get('fold_bn', False)})":
             lambda batch: graftkit_predict.outputs_for_squares(batch)[0], "PyTorch fp32 eager": torch_fp32}
    for name, session in sessions.items():
        paths[name] = lambda batch, s=session: s.run(["logits"], {"input": normalize_squares(batch, pre)})
    timings = {(name, b): [] for name in paths for b in (1, 32)}
    for name, run in paths.items():  # warm-up
        run(squares[:1])
        run(squares[:32])
    for round_number in range(args.rounds):
        print(f"round {round_number + 1}/{args.rounds}", flush=True)
        for name, run in paths.items():
            for b in (1, 32):
                started = time.perf_counter()
                for start in range(0, 64, b):
                    run(squares[start:start + b])
                timings[(name, b)].append(64 / (time.perf_counter() - started))
    rate = {key: float(np.median(v)) for key, v in timings.items()}
    fastest_fp32 = {b: max(rate[(n, b)] for n in paths if "int8" not in n) for b in (1, 32)}
    rows = [[name, f"{rate[(name, 1)]:.1f}", f"{rate[(name, 32)]:.1f}",
             f"{rate[(name, 32)] / fastest_fp32[32]:.2f}x"] for name in paths]
    print(table(rows, ["path", "images/s batch 1", "images/s batch 32", "vs fastest non-int8 (batch 32)"]))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())} · median of {args.rounds} rounds "
          f"of 64 images per path and batch size, paths interleaved")


if __name__ == "__main__":
    main()
