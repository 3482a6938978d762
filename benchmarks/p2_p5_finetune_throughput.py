"""P2 and P5: fine-tuning throughput against the compute limit and the hardware's peak.

* raw: train steps of the same model on synthetic tensors already in memory (the compute limit),
  eager and with frozen BatchNorm folded, as graftkit trains;
* graftkit: images/s in the training part of its fine-tune epochs on real data (decoding,
  augmentation and batching included; the validation pass is reported separately);
* peak: a large fp32 matmul, measured in the same run. One Lite0 train step at 224 px is taken as
  2.3 GFLOP per image (forward 0.77 GFLOP, backward twice that).

    python benchmarks/p2_p5_finetune_throughput.py [--data hymenoptera] [--epochs 2]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dataset, fresh_dir, matmul_peak_gflops, table, machine  # noqa: E402

GFLOP_PER_TRAIN_IMAGE = 2.3


def raw_train_throughput(batch_size: int, fold: bool, steps: int = 8) -> float:
    import torch

    from graftkit import create_backbone
    from graftkit.engine.fusion import fold_frozen_batchnorm
    from graftkit.heads import Classifier

    model = Classifier(create_backbone("efficientnet_lite0"), 2).to(memory_format=torch.channels_last)
    model.set_trainable([True] * model.backbone.num_stages, train_bn=False)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), 1e-5, fused=True)
    x = torch.randn(batch_size, 3, 224, 224).to(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch_size,))
    times = []
    with fold_frozen_batchnorm(model, enabled=fold):
        for _ in range(steps):
            start = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
    times = sorted(times[2:])  # skip warm-up, take the median
    return batch_size / times[len(times) // 2]


def main() -> None:
    print(machine(), flush=True)
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="hymenoptera")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None, help="default: graftkit's default")
    args = parser.parse_args()
    import torch

    from graftkit import TrainConfig, fit
    from graftkit.engine.runtime import train_batch_size
    from graftkit.hardware import tune_cpu_allocator

    tune_cpu_allocator()  # the raw steps run with the process settings graftkit itself uses
    peak = matmul_peak_gflops()
    batch = train_batch_size(TrainConfig(data_dir=".", batch_size=args.batch_size), torch.device("cpu"))
    raw_eager = raw_train_throughput(batch, fold=False)
    raw = raw_train_throughput(batch, fold=True)
    work = fresh_dir("p2")
    run = fit(TrainConfig(data_dir=dataset(args.data), strategy="fine-tune", head_epochs=0,
                          finetune_epochs=args.epochs, out_dir=work / "run", cache_dir=work / "cache",
                          batch_size=args.batch_size, progress="none"))
    rows = [r for r in run.history if r["phase"] == "finetune"]
    graft_train = sorted(r["train_images_per_second"] for r in rows)[len(rows) // 2]
    num_train, num_val = run.metrics["num_train"], run.metrics["num_val"]
    epoch_seconds = sorted(r["seconds"] for r in rows)[len(rows) // 2]
    rate = lambda ips: ips * GFLOP_PER_TRAIN_IMAGE / peak  # noqa: E731
    print(f"threads {torch.get_num_threads()}, peak fp32 matmul {peak:.0f} GFLOP/s, data {args.data} "
          f"({num_train} train / {num_val} val), batch {run.metrics['batch_size']}")
    print(table([
        ["raw train step, eager (BatchNorm frozen)", f"{raw_eager:.1f}", f"{rate(raw_eager):.2f}", ""],
        ["raw train step, frozen BatchNorm folded", f"{raw:.1f}", f"{rate(raw):.2f}", "1.00"],
        ["graftkit fine-tune epoch, training part", f"{graft_train:.1f}", f"{rate(graft_train):.2f}",
         f"{graft_train / raw:.2f}"],
        ["graftkit fine-tune epoch, train + val pass", f"{num_train / epoch_seconds:.1f} train img/s", "", ""],
    ], ["workload", "images/s", "P5: fraction of peak", "P2: over raw"]))
    print(f"P2 = {graft_train / raw:.2f}   P5 = {rate(graft_train):.2f}   "
          f"(val accuracy after {args.epochs} fine-tune epochs: {run.metrics['val_accuracy']:.4f})")


if __name__ == "__main__":
    main()
