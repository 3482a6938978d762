"""One self-contained ``report.html`` per run or comparison: figures and thumbnails are embedded as
data URIs, the CSS is inline, and nothing refers to the network (no scripts, fonts or stylesheets)."""
from __future__ import annotations

import html
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Sequence

from .._version import __version__
from . import plots
from .images import jpeg_uri, png_uri, thumbnail
from .runfiles import RunFiles, find_compare_runs, load_run
from .diagnosis import diagnose
from .summary import per_class_metrics, summarize_comparison, worst_predictions

CSS = """
:root { --ink: #1f2933; --muted: #616e7c; --line: #e4e7eb; --bg: #f5f7fa; --card: #ffffff;
        --good: #3b9c4f; --bad: #d1495b; --accent: #2e86ab; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
       font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 24px 60px; }
header h1 { font-size: 26px; margin: 0 0 4px; }
header p { margin: 0; color: var(--muted); }
section { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
          padding: 18px 22px; margin: 18px 0; }
h2 { font-size: 18px; margin: 0 0 12px; }
h3 { font-size: 15px; margin: 16px 0 8px; }
p.note { color: var(--muted); font-size: 13px; margin: 6px 0 0; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin-top: 16px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 10px 16px;
        min-width: 150px; }
.card .value { font-size: 22px; font-weight: 600; }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--muted); font-weight: 600; font-size: 12px; text-transform: uppercase; letter-spacing: .03em; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { background: #eef8f0; font-weight: 600; }
img.figure { max-width: 100%; height: auto; display: block; margin: 6px auto; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 14px; }
.grid figure { margin: 0; background: var(--bg); border-radius: 8px; padding: 6px; text-align: center; }
.grid img { width: 160px; height: 160px; border-radius: 4px; display: block; margin: 0 auto; }
figcaption { font-size: 12px; margin-top: 4px; line-height: 1.35; word-break: break-word; }
.wrong { color: var(--bad); font-weight: 600; }
.right { color: var(--good); font-weight: 600; }
.missing { width: 160px; height: 160px; margin: 0 auto; display: flex; align-items: center;
           justify-content: center; background: #e4e7eb; color: var(--muted); font-size: 12px; }
.cam { display: grid; grid-template-columns: repeat(3, 170px) 1fr; gap: 10px; align-items: center;
       margin-bottom: 12px; }
.cam figure { margin: 0; text-align: center; }
.cam img { width: 160px; height: 160px; border-radius: 4px; }
.side { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.side > div { flex: 1 1 420px; }
.matrices { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 12px; }
code, pre { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 13px; }
pre { background: var(--bg); padding: 10px; border-radius: 6px; overflow-x: auto; }
details summary { cursor: pointer; color: var(--accent); }
.finding { border-left: 4px solid var(--accent); padding: 2px 0 2px 14px; margin: 12px 0; }
.finding.high { border-color: var(--bad); }
.finding.medium { border-color: #e8a33d; }
.finding h3 { margin: 0 0 2px; }
.finding p, .finding ol { margin: 2px 0; }
.finding ol { padding-left: 22px; }
.badge { font-size: 11px; font-weight: 600; text-transform: uppercase; letter-spacing: .04em; color: var(--muted);
         margin-right: 6px; }
.strip { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 6px; }
.strip img, .strip .missing { width: 80px; height: 80px; border-radius: 4px; font-size: 10px; }
footer { color: var(--muted); font-size: 12px; text-align: center; margin-top: 24px; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f} %"


def secs(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = (),
          highlight: int | None = None) -> str:
    """An HTML table; cells are escaped unless given as ``Raw``."""
    head = "".join(f'<th class="num">{esc(h)}</th>' if i in numeric else f"<th>{esc(h)}</th>"
                   for i, h in enumerate(headers))
    body = []
    for r, row in enumerate(rows):
        cells = "".join(f'<td class="num">{_cell(c)}</td>' if i in numeric else f"<td>{_cell(c)}</td>"
                        for i, c in enumerate(row))
        body.append(f'<tr class="best">{cells}</tr>' if r == highlight else f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class Raw(str):
    """Already-safe HTML."""


def _cell(value: Any) -> str:
    return value if isinstance(value, Raw) else esc(value)


def figure(png: bytes, alt: str) -> str:
    return f'<img class="figure" src="{png_uri(png)}" alt="{esc(alt)}">'


def section(title: str, body: str, anchor: str = "") -> str:
    anchor_attr = f' id="{esc(anchor)}"' if anchor else ""
    return f"<section{anchor_attr}><h2>{esc(title)}</h2>{body}</section>"


def cards(items: Sequence[tuple[str, str]]) -> str:
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="value">{esc(v)}</div><div class="label">{esc(k)}</div></div>'
        for k, v in items) + "</div>"


def page(title: str, subtitle: str, summary: str, sections: Sequence[str], regenerate: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
            f"<header><h1>{esc(title)}</h1><p>{subtitle}</p>{summary}</header>{''.join(sections)}"
            f"<footer>graftkit {esc(__version__)} · written {datetime.now():%Y-%m-%d %H:%M} from the files "
            f"of this folder, nothing retrained · regenerate with <code>{esc(regenerate)}</code></footer>"
            f"</main></body></html>\n")


# ----------------------------------------------------------------------------- building blocks


def per_class_section(run: RunFiles, title: str = "Per-class precision and recall") -> str:
    if not run.predictions:
        return section(title, "<p>No predictions.csv in the run folder.</p>")
    result = per_class_metrics(run.predictions, run.classes)
    rows = [(c, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", m["support"])
            for c, m in result["per_class"].items()]
    left = table(["class", "precision", "recall", "F1", "val images"], rows, numeric=(1, 2, 3, 4))
    right = figure(plots.confusion_png(result["confusion_matrix"], result["classes"]), "confusion matrix")
    note = ('<p class="note">From predictions.csv: the saved model on the validation split. Confusion matrix '
            "rows are the true class, columns the predicted one; colour is the share of the true class.</p>")
    return section(title, f'<div class="side"><div>{left}{note}</div><div>{right}</div></div>', "per-class")


def picture(path: str, size: int = 160) -> str:
    """An image file as an embedded thumbnail, or a grey square saying it is gone."""
    image = thumbnail(path, size)
    return (f'<img src="{jpeg_uri(image)}" alt="{esc(Path(path).name)}">' if image is not None
            else '<div class="missing">image not found</div>')


def worst_section(run: RunFiles, count: int = 12, title: str = "Worst-classified validation images") -> str:
    if not run.predictions:
        return section(title, "<p>No predictions.csv in the run folder.</p>")
    items = []
    for row in worst_predictions(run.predictions, count):
        picture_html = picture(row["path"])
        verdict = "right" if row["label"] == row["predicted"] else "wrong"
        items.append(
            f"<figure>{picture_html}<figcaption>true <b>{esc(row['label'])}</b><br>"
            f'predicted <span class="{verdict}">{esc(row["predicted"])}</span> ({pct(row["confidence"])})<br>'
            f"p(true) {pct(row['true_class_probability'])}<br><small>{esc(Path(row['path']).name)}</small>"
            f"</figcaption></figure>")
    note = (f'<p class="note">The {len(items)} validation images with the lowest probability for their true '
            f"class (from predictions.csv), worst first; confidence is the predicted class's probability.</p>")
    return section(title, f'<div class="grid">{"".join(items)}</div>{note}', "worst")


def diagnosis_section(run: RunFiles) -> str:
    """The findings of :func:`graftkit.report.diagnosis.diagnose`: what was seen, what to try, in order."""
    findings = diagnose(run)
    if not findings:
        return section("Diagnosis: what to fix", "<p>Nothing to fix found: no overfitting, rising validation "
                       "loss, weak class, small data or likely label error in this run's files.</p>", "diagnosis")
    blocks = []
    for f in findings:
        steps = "".join(f"<li>{_step_html(step)}</li>" for step in f.try_next)
        strip = ""
        if f.images:
            link = (' <a href="#label-issues">all of them below</a>' if f.rule == "label-issues" else "")
            strip = (f'<div class="strip">{"".join(picture(p, 80) for p in f.images)}</div>'
                     f'<p class="note">{esc(", ".join(Path(p).name for p in f.images))}{link}</p>')
        blocks.append(f'<div class="finding {esc(f.severity)}"><h3><span class="badge">{esc(f.severity)}</span>'
                      f"{esc(f.title)}</h3><p>{esc(f.seen)}</p><p><b>Try, in order:</b></p><ol>{steps}</ol>"
                      f"{strip}</div>")
    note = ('<p class="note">Read from this run\'s files (history.jsonl, metrics.json, predictions.csv, '
            "config.json, label_issues.csv); see docs/diagnosis.md for each rule.</p>")
    return section("Diagnosis: what to fix", "".join(blocks) + note, "diagnosis")


def _step_html(step: str) -> str:
    """A remedy with its flags as code; one that starts with a command or flags shows that part (up to
    ': ' or ' (') as code."""
    cut = 0
    if step.startswith(("--", "graft ")):
        cut = min((i for i in (step.find(": "), step.find(" (")) if i > 0), default=len(step))
    rest = re.sub(r"(--[a-z][a-z-]*)", r"<code>\1</code>", esc(step[cut:]))
    return (f"<code>{esc(step[:cut])}</code>" if cut else "") + rest


def label_issues_section(run: RunFiles, count: int = 24) -> str:
    if not run.label_issues:
        return ""
    items = []
    for row in run.label_issues[:count]:
        items.append(f"<figure>{picture(row['path'])}<figcaption>#{esc(row['rank'])} labelled "
                     f"<b>{esc(row['given_label'])}</b><br>looks like <span class=\"wrong\">"
                     f"{esc(row['suggested_label'])}</span><br>quality {float(row['label_quality']):.3f} · "
                     f"{esc(row['split'])}<br><small>{esc(Path(row['path']).name)}</small></figcaption></figure>")
    note = (f'<p class="note">{len(run.label_issues)} images whose given label out-of-sample linear probes on the '
            f"pretrained features find unlikely (cleanlab's confident learning), most suspicious first; the "
            f"first {len(items)} shown. All are in label_issues.csv.</p>")
    return section(f"Likely label errors ({len(run.label_issues)})", f'<div class="grid">{"".join(items)}</div>{note}',
                   "label-issues")


def gradcam_section(run: RunFiles, count: int = 4) -> str:
    title = "Grad-CAM: where the model looked"
    if count <= 0 or not run.predictions:
        return ""
    if not run.has_model:
        return section(title, "<p>No model files (model.safetensors, model.json) in the run folder.</p>")
    from .gradcam import explain_images

    try:
        explained = explain_images(run.run_dir, worst_predictions(run.predictions, count))
    except Exception as exc:  # a report still helps without heat-maps; say why they are missing
        return section(title, f"<p>Grad-CAM could not be computed: {esc(type(exc).__name__)}: {esc(exc)}</p>")
    blocks = []
    for item in explained:
        row = item["row"]
        if item["input"] is None:
            blocks.append(f"<p>{esc(row['path'])}: image not found.</p>")
            continue
        verdict = "right" if row["label"] == row["predicted"] else "wrong"
        blocks.append(
            '<div class="cam">'
            f'<figure><img src="{jpeg_uri(item["input"])}" alt="input"><figcaption>model input'
            f"</figcaption></figure>"
            f'<figure><img src="{jpeg_uri(item["predicted"])}" alt="Grad-CAM predicted"><figcaption>evidence for '
            f'<span class="{verdict}">{esc(row["predicted"])}</span> (predicted)</figcaption></figure>'
            f'<figure><img src="{jpeg_uri(item["true"])}" alt="Grad-CAM true"><figcaption>evidence for '
            f"<b>{esc(row['label'])}</b> (true)</figcaption></figure>"
            f"<div><b>{esc(Path(row['path']).name)}</b><br>true {esc(row['label'])}, predicted "
            f'<span class="{verdict}">{esc(row["predicted"])}</span> with {pct(row["confidence"])}; '
            f"p(true) {pct(row['true_class_probability'])}</div></div>")
    note = ('<p class="note">Gradient-weighted class activation maps of the last backbone stage (red: strong '
            "evidence for the named class), for the worst-classified images above. The model is loaded "
            "from the run's model files.</p>")
    return section(title, "".join(blocks) + note, "gradcam")


def freeze_auto_section(run: RunFiles) -> str:
    info = run.freeze_auto
    if not info:
        return ""
    rows = [(r["label"], r["depth"], f"{r['val_accuracy']:.4f}", secs(r["seconds"]), secs(r.get("seconds_total")),
             "chosen" if r["depth"] == info.get("chosen_depth") else "") for r in info["candidates"]]
    chosen_index = next((i for i, r in enumerate(info["candidates"]) if r["depth"] == info.get("chosen_depth")), None)
    body = (f"<p>{esc(info.get('reason', ''))}</p>"
            + table(["trainable", "frozen stages", "val accuracy", "seconds (differing part)", "seconds (all)", ""],
                    rows, numeric=(1, 2, 3, 4), highlight=chosen_index)
            + figure(plots.freeze_auto_png(info["candidates"], info.get("chosen_depth")), "freeze depth")
            + f'<p class="note">{esc(info.get("budget", ""))}</p>')
    return section("Freeze depth chosen by measurement (--freeze auto)", body, "freeze-auto")


def plan_section(run: RunFiles) -> str:
    info = run.plan
    if not info:
        return ""
    rows, chosen_index = [], None
    for i, c in enumerate(info["candidates"]):
        chosen_index = i if c.get("chosen") else chosen_index
        speed = c.get("ms_per_image") or {}
        accuracy = "skipped" if c.get("probe_accuracy") is None else f"{c['probe_accuracy']:.3f}"
        rows.append((c["backbone"], accuracy, "" if "forward" not in speed else f"{speed['forward']:.1f}",
                     c.get("schedule") or c.get("skipped", ""), secs(c.get("predicted_seconds")),
                     "chosen" if c.get("chosen") else ""))
    limit = info.get("time_limit_seconds")
    body = (f"<p>{esc(info.get('reason', ''))}</p>"
            + table(["backbone", "probe accuracy (inner split)", "ms/image forward", "best schedule that fits",
                     "predicted", ""], rows, numeric=(1, 2, 4), highlight=chosen_index)
            + f'<p class="note">{esc(info.get("probe_split", ""))}. '
            + (f"Time limit {secs(limit)}: {secs(info.get('seconds_before_plan'))} spent before the plan, "
               f"{secs(info.get('reserve_seconds'))} kept for the final evaluation and files.</p>" if limit else "</p>"))
    return section("Plan: backbone and schedule chosen by measurement", body, "plan")


def lr_find_section(run: RunFiles) -> str:
    info = run.lr_find
    if not info:
        return ""
    body = (f"<p>{esc(info.get('message', ''))}</p>" + figure(plots.lr_find_png(info), "learning-rate range test")
            + f'<p class="note">{esc(info.get("method", ""))}</p>')
    return section("Learning-rate finder (--lr-find)", body, "lr-find")


def data_section(run: RunFiles) -> str:
    train, val = run.class_counts("train"), run.class_counts("val")
    rows = [(c, (train or {}).get(c, "–") if train is not None else "–", (val or {}).get(c, "–"))
            for c in run.classes]
    body = (f"<p>Data folder <code>{esc(run.config.get('data_dir', '?'))}</code>: {len(run.classes)} classes, "
            f"{esc(run.metrics.get('num_train', '?'))} training and {esc(run.metrics.get('num_val', '?'))} "
            f"validation images.</p>" + table(["class", "train", "val"], rows, numeric=(1, 2)))
    if run.skipped:
        items = "".join(f"<li><code>{esc(p)}</code> — {esc(r)}</li>" for p, r in run.skipped[:200])
        more = f"<p class='note'>… and {len(run.skipped) - 200} more in skipped.csv</p>" if len(run.skipped) > 200 else ""
        body += f"<h3>Skipped files ({len(run.skipped)})</h3><ul>{items}</ul>{more}"
    else:
        body += "<p class='note'>No files were skipped.</p>"
    if run.duplicates:
        items = "".join(f"<li><code>{esc(p)}</code></li>" for p in run.duplicates[:50])
        body += (f"<h3>Validation images also in train ({len(run.duplicates)})</h3><ul>{items}</ul>"
                 "<p class='note'>Same bytes in both splits: validation accuracy is optimistic.</p>")
    if run.label_conflicts:
        items = "".join(f"<li>{esc(g)}: <code>{esc(p)}</code> ({esc(c)})</li>" for g, c, p in run.label_conflicts[:100])
        groups = len({g for g, _, _ in run.label_conflicts})
        body += (f"<h3>Label conflicts ({groups})</h3><ul>{items}</ul>"
                 "<p class='note'>The same bytes under different classes (same number: same image): keep each "
                 "image in one class.</p>")
    return section("Data", body, "data")


CONFIG_KEYS = ("strategy", "backbone", "pretrained", "image_size", "epochs", "head_epochs", "finetune_epochs",
               "freeze", "lr", "finetune_lr", "stage_lr_decay", "weight_decay", "label_smoothing", "dropout",
               "head_init", "augment", "batch_size", "seed", "split_seed", "val_fraction", "max_seconds", "device",
               "resolved_precision", "cache_views", "train_bn")


def _shown(value: Any) -> str:
    """A setting as a person reads it: yes/no, "–" for unset, numbers as written."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "–" if value is None else str(value)


def used_settings(config: dict[str, Any], metrics: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(setting, value) rows with the values the run used: the fine-tune epochs as head + fine-tune,
    the batch size and device it resolved to (``metrics.json``), no rows for settings its strategy
    does not use."""
    from ..config import FINE_TUNE_ONLY

    metrics, strategy = metrics or {}, config.get("strategy")
    used = dict(config)
    if strategy == "fine-tune" and isinstance(config.get("head_epochs"), int) and \
            isinstance(config.get("finetune_epochs"), int):  # runs of before 0.2 recorded an unused "epochs"
        head, finetune = config["head_epochs"], config["finetune_epochs"]
        used["epochs"] = f"{head + finetune} ({head} head + {finetune} fine-tune)"
    skip = {"head_epochs", "finetune_epochs"} | (set() if strategy in ("fine-tune", None) else set(FINE_TUNE_ONLY))
    if strategy == "scratch" or config.get("pretrained") is False:
        skip.add("head_init")
    batch, head_batch = metrics.get("batch_size"), metrics.get("head_batch_size")
    if batch is not None:
        cached = config.get("cache", True) and strategy != "scratch" and head_batch not in (None, batch)
        used["batch_size"] = (head_batch if cached and strategy == "feature-extraction" else
                              f"{batch} ({head_batch} in the head phase, on cached features)" if cached else batch)
    if metrics.get("device") and config.get("device") == "auto":
        used["device"] = f"{metrics['device']} (auto)"
    if strategy == "feature-extraction" and config.get("cache", True) and config.get("cache_views") == 1 and \
            config.get("augment", "none") != "none":  # view 0 of the cached features is the clean crop
        used["augment"] = f"{config['augment']}, unused: cached features of the clean crop (--cache-views 1)"
    if config.get("split_seed") is None and "seed" in config:
        used["split_seed"] = f"{config['seed']} (the seed)"
    if "max_seconds" in config and config["max_seconds"] is None:
        used["max_seconds"] = "no limit"
    started = metrics.get("head_init")
    if isinstance(started, dict) and started.get("from") == "imagenet" and isinstance(started.get("classes"), dict):
        pairs = ", ".join(f"{k} → {v}" for k, v in started["classes"].items())
        used["head_init"] = f"{config.get('head_init', 'auto')}: the ImageNet classifier's rows ({pairs})"
    return [(k, _shown(used[k])) for k in CONFIG_KEYS if k in used and k not in skip]


def config_section(config: dict[str, Any], title: str = "Configuration",
                   metrics: dict[str, Any] | None = None) -> str:
    rows = used_settings(config, metrics)
    full = f"<details><summary>full config.json</summary><pre>{esc(json.dumps(config, indent=2))}</pre></details>"
    return section(title, table(["setting", "value"], rows) + full, "config")


def metrics_section(run: RunFiles) -> str:
    m = run.metrics
    rows = [("validation accuracy (saved model)", f"{m.get('val_accuracy', 0):.4f}"),
            ("validation loss", f"{m.get('val_loss', 0):.4f}"),
            *_balanced_rows(m),
            ("best epoch", f"{m.get('best_epoch')} ({m.get('best_phase')}{_best_by(m)})"),
            ("last epoch's validation accuracy", f"{m.get('final_epoch_val_accuracy', 0):.4f}"),
            ("seconds in all", secs(m.get("seconds_total"))),
            ("device · precision · batch size", f"{m.get('device')} · {m.get('precision')} · {m.get('batch_size')}")]
    if m.get("stopped_early"):
        rows.append(("stopped early", f"time budget spent after epoch {m['stopped_early'].get('after_epoch')}"))
    if m.get("diverged"):
        rows.append(("diverged", ", ".join(f"{d['phase']} epoch {d['epoch']}" for d in m["diverged"])))
    phases = [(p["name"], p["epochs"], secs(p["seconds"]),
               "–" if p.get("val_accuracy") is None else f"{p['val_accuracy']:.4f}",
               "–" if p.get("best_val_accuracy") is None else f"{p['best_val_accuracy']:.4f}")
              for p in m.get("phases", [])]
    body = table(["metric", "value"], rows)
    if phases:
        body += "<h3>Phases</h3>" + table(["phase", "epochs", "seconds", "last val accuracy", "best val accuracy"],
                                          phases, numeric=(1, 2, 3, 4))
    return section("Final metrics", body, "metrics")


def _balanced_rows(m: dict) -> list[tuple[str, str]]:
    """Balanced accuracy and macro-F1 (runs from before they were recorded have neither)."""
    if "val_balanced_accuracy" not in m:
        return []
    return [("validation balanced accuracy (mean recall per class)", f"{m['val_balanced_accuracy']:.4f}"),
            ("validation macro-F1", f"{m.get('val_macro_f1', 0):.4f}")]


def _best_by(m: dict) -> str:
    balance = m.get("balance") or {}
    if not balance.get("imbalanced"):
        return ""
    return (f"; by balanced accuracy: classes imbalanced, max/min {balance.get('max_min_ratio', 0):.1f}×, "
            f"balance={balance.get('method')}")


def calibration_section(run: RunFiles) -> str:
    """The reliability diagram and ECE/NLL before and after the temperature (from metrics.json)."""
    c = run.metrics.get("calibration")
    if not c or "reliability_before" not in c or "reliability_after" not in c:
        return ""
    rows = [("temperature", f"{c.get('temperature', 1.0):.3f}"),
            ("ECE before → after", f"{c.get('ece_before', 0):.4f} → {c.get('ece_after', 0):.4f}"),
            ("NLL before → after", f"{c.get('nll_before', 0):.4f} → {c.get('nll_after', 0):.4f}")]
    png = plots.reliability_png(c["reliability_before"], c["reliability_after"], int(c.get("bins", 15)))
    return section("Calibration", figure(png, "reliability diagram") + table(["", "value"], rows) +
                   f'<p class="note">Predicted probabilities are divided by a temperature fitted on the validation '
                   f"images at the end of training. The figures after it are {esc(c.get('scored', 'cross-fitted'))}: "
                   f"each image is scored with a temperature fitted on the other folds. ECE: mean |accuracy − "
                   f"confidence| over 15 equal-width bins of the max probability, weighted by their counts.</p>",
                   "calibration")


# ----------------------------------------------------------------------------- the two reports


def render_run_report(run_dir: str | Path, out: str | Path | None = None, worst: int = 12, gradcam: int = 4) -> Path:
    """Write ``run_dir/report.html`` (or ``out``) for one run, from its files alone."""
    run = load_run(run_dir)
    m = run.metrics
    folder = Path(run_dir).resolve()
    name = f"{folder.parent.name}/{folder.name}" if folder.name.startswith("seed") else folder.name
    title = f"graftkit run report: {name}"
    subtitle = (f"{esc(run.strategy)} · {esc(m.get('backbone'))} "
                f"({'pretrained' if m.get('pretrained') else 'random init'}) · {len(run.classes)} classes · "
                f"<code>{esc(run.run_dir)}</code>")
    summary = cards([("val accuracy", pct(m.get("val_accuracy"))), ("val loss", f"{m.get('val_loss', 0):.3f}"),
                     ("best epoch", f"{m.get('best_epoch')} of {len(run.history)}"),
                     ("train / val images", f"{m.get('num_train')} / {m.get('num_val')}"),
                     ("time", secs(m.get("seconds_total")))])
    curves = section("Learning curves", figure(plots.run_curves_png(run.history), "learning curves") +
                     '<p class="note">Dashed: training (with augmentation, dropout and label smoothing in the '
                     "loss), solid: validation. Dotted lines mark a new phase. Top: per epoch; bottom: against "
                     "wall-clock seconds since the run started.</p>", "curves")
    sections = [diagnosis_section(run), curves, metrics_section(run), calibration_section(run), per_class_section(run),
                worst_section(run, worst), label_issues_section(run), gradcam_section(run, gradcam),
                plan_section(run), freeze_auto_section(run), lr_find_section(run), data_section(run),
                config_section(run.config, metrics=run.metrics)]
    text = page(title, subtitle, summary, [s for s in sections if s], f"graft report {run_dir}")
    path = Path(out) if out is not None else run.run_dir / "report.html"
    from ..fileio import atomic_write_text

    atomic_write_text(path, text)
    return path


def render_compare_report(compare_dir: str | Path, out: str | Path | None = None, worst: int = 12,
                          gradcam: int = 4, summary: dict[str, Any] | None = None) -> Path:
    """Write ``compare_dir/report.html`` for a ``graft compare`` folder, from its files alone."""
    compare_dir = Path(compare_dir)
    runs = find_compare_runs(compare_dir)
    saved = {}
    if (compare_dir / "compare.json").is_file():
        saved = json.loads((compare_dir / "compare.json").read_text())
    summary = summary or {**saved, **summarize_comparison(runs)}
    stats = summary["strategies"]
    first = next(iter(runs.values()))[0]
    ranking = summary.get("ranking_by_mean_val_accuracy") or list(stats)
    best_name = ranking[0]
    budget = saved.get("budget", {})
    budget_text = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in budget.items() if v is not None and
                            not isinstance(v, dict))
    title = "graftkit comparison: " + " vs ".join(stats)
    seeds = max(len(rs) for rs in runs.values())
    subtitle = (f"<code>{esc(first.config.get('data_dir', '?'))}</code> · {esc(first.metrics.get('backbone'))} · "
                f"{seeds} seed(s) per strategy · same split, same budget ({esc(budget_text or 'see runs')})")
    summary_cards = cards([(name, pct(stats[name]["val_accuracy"]["mean"])) for name in stats] +
                          [("val images", str(summary.get("num_val"))), ("classes", str(len(first.classes)))])

    rows, highlight = [], None
    for i, name in enumerate(stats):
        s = stats[name]
        acc = s["val_accuracy"]
        interval = acc.get("interval")
        interval_text = "–" if not interval else f"{100 * interval[0]:.1f} – {100 * interval[1]:.1f} %"
        per_seed = ", ".join(f"{100 * v:.1f}" for v in acc["per_seed"])
        ttt = s["time_to_target_seconds"]
        memory = s["peak_memory_mb"]["max"]
        best = ", ".join(f"{e} ({p})" if p and p != "scratch" else str(e)
                         for e, p in zip(s.get("best_epoch", []), s.get("best_phase", [])))
        rows.append((name, pct(acc["mean"]), interval_text, per_seed, best or "–",
                     f"{secs(ttt['mean'])} ({ttt['reached']})", secs(s["seconds"]["mean"]),
                     "/".join(str(e) for e in sorted(set(s["epochs"]))), "–" if memory is None else f"{memory:.0f} MB"))
        if name == best_name:
            highlight = i
    target = summary.get("target_accuracy")
    definitions = summary.get("definitions", {})
    notes = "".join(f"<li><b>{esc(k.replace('_', ' '))}</b>: {esc(v)}</li>" for k, v in definitions.items())
    if summary.get("feature_cache_seconds") is not None:
        notes += (f"<li><b>feature cache</b>: the frozen backbone's pooled features were computed once before the "
                  f"runs ({secs(summary['feature_cache_seconds'])}) and read from the cache by every "
                  f"feature-extraction run and fine-tune head phase; that time is not in their seconds</li>")
    ordering = " > ".join(f"{n} ({pct(stats[n]['val_accuracy']['mean'])})" for n in ranking)
    result_table = table(["strategy", "mean val accuracy", "95% interval", "per seed (%)", "best epoch per seed",
                          f"time to {pct(target)} (seeds)", "seconds per run", "epochs", "peak memory"],
                         rows, numeric=(1, 5, 6, 7, 8), highlight=highlight)
    result = section("Result", f"<p>Ranking by mean validation accuracy: <b>{esc(ordering)}</b>.</p>"
                     f"{result_table}<p class='note'>Each run keeps its best epoch by validation accuracy (the "
                     f"saved model); the curves below show every epoch.</p><ul class='note'>{notes}</ul>", "result")

    histories = {name: [r.history for r in rs] for name, rs in runs.items()}
    curves = section("Learning curves", figure(plots.compare_curves_png(histories, target), "learning curves") +
                     '<p class="note">Validation accuracy and loss of each strategy: the line is the mean over '
                     "seeds, the band spans the lowest to the highest seed. Bottom: the same against wall-clock "
                     "seconds since each run started.</p>", "curves")
    overfit = section("Train vs validation", figure(plots.overfitting_png(histories), "train vs validation"), "overfit")

    matrices = []
    for name, rs in runs.items():
        if rs[0].predictions:
            result_pc = per_class_metrics(rs[0].predictions, rs[0].classes)
            matrices.append(f"<div><h3>{esc(name)} ({esc(rs[0].run_dir.name)})</h3>"
                            + figure(plots.confusion_png(result_pc["confusion_matrix"], result_pc["classes"],
                                                         title=f"{name}"), f"confusion matrix {name}") + "</div>")
    recall_rows = []
    for cls in first.classes:
        cells: list[Any] = [cls]
        for name, rs in runs.items():
            recalls = [per_class_metrics(r.predictions, r.classes)["per_class"].get(cls, {}).get("recall")
                       for r in rs if r.predictions]
            recalls = [v for v in recalls if v is not None]
            cells.append("–" if not recalls else f"{sum(recalls) / len(recalls):.3f}")
        recall_rows.append(cells)
    per_class = section("Per class", table(["class", *[f"{n} recall" for n in runs]], recall_rows,
                                           numeric=tuple(range(1, len(runs) + 1)))
                        + '<p class="note">Recall per class, mean over seeds.</p>'
                        + f'<div class="matrices">{"".join(matrices)}</div>', "per-class")

    best_run = max(runs[best_name], key=lambda r: r.metrics.get("val_accuracy", 0))
    worst = worst_section(best_run, worst, f"Worst-classified validation images: {best_name}, "
                                           f"{best_run.run_dir.name}")
    cams = gradcam_section(best_run, gradcam)

    run_rows = []
    for name, rs in runs.items():
        for r in rs:
            rel = f"{name}/{r.run_dir.name}"
            link = (Raw(f'<a href="{esc(rel)}/report.html">{esc(rel)}</a>') if (r.run_dir / "report.html").is_file()
                    else rel)
            run_rows.append((link, r.config.get("seed"), f"{r.metrics['val_accuracy']:.4f}",
                             r.metrics.get("best_epoch"), len(r.history), secs(r.metrics.get("seconds_total"))))
    runs_section = section("Runs", table(["run folder", "seed", "val accuracy", "best epoch", "epochs", "seconds"],
                                         run_rows, numeric=(1, 2, 3, 4, 5)), "runs")
    shared = {k: v for k, v in first.config.items() if k not in ("strategy", "out_dir", "seed", "epochs",
                                                                  "head_epochs", "finetune_epochs")}
    sections = [result, curves, overfit, per_class, worst, cams, runs_section, data_section(first),
                config_section(shared, "Shared configuration")]
    text = page(title, subtitle, summary_cards, [s for s in sections if s], f"graft report {compare_dir}")
    path = Path(out) if out is not None else compare_dir / "report.html"
    from ..fileio import atomic_write_text

    atomic_write_text(path, text)
    return path
