"""`mmpipe report`: one self-contained HTML file (inline PNGs) with curves, Recall@K, confusion, 2-D map."""

from __future__ import annotations

import base64
import html
import io
import json
import os
from typing import Any

from pipeline.errors import UserError
from pipeline.io.fs import exists, join, read_bytes, write_bytes_atomic


def _load(run: str, name: str) -> Any:
    url = join(run, name)
    if not exists(url):
        return None
    data = read_bytes(url).decode()
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in data.splitlines() if line.strip()]
    return json.loads(data)


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _curves(metrics: list[dict[str, Any]], best_epoch: int | None) -> str:
    import matplotlib.pyplot as plt

    steps = [m for m in metrics if m.get("kind") == "step"]
    epochs = [m for m in metrics if m.get("kind") == "epoch"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    axes[0].plot([m["step"] for m in steps], [m["loss"] for m in steps], lw=0.8, label="train loss")
    axes[0].plot(
        [m["step"] for m in epochs], [m["val_loss"] for m in epochs], "o-", label="val loss"
    )
    axes[0].set_xlabel("optimizer step")
    acc = [(m["step"], m["val_acc"]) for m in epochs if m.get("val_acc") is not None]
    if acc:
        axes[1].plot(*zip(*acc), "o-", color="tab:green")
    saved = [m["step"] for m in epochs if m.get("epoch") == best_epoch]
    for ax in axes if saved else ():  # the epoch whose weights model.pt holds
        ax.axvline(saved[-1], color="grey", ls="--", lw=1, label=f"saved: epoch {best_epoch}")
    axes[0].legend()
    axes[1].set_title("validation accuracy")
    axes[1].set_ylim(0, 1.02)
    axes[1].set_xlabel("optimizer step")
    return _png(fig)


def _min_r1(e: dict[str, Any]) -> float | None:
    """The worst pair's class-level R@1, or instance-level for a run trained without labels."""
    r1 = [v.get("class", v["instance"])["R@1"] for v in e["retrieval"].values()]
    return min(r1, default=None)


def _recall_bars(evals: dict[str, dict[str, Any]], level: str) -> str:
    import matplotlib.pyplot as plt
    import numpy as np

    pairs = sorted({p for e in evals.values() for p in e["retrieval"]})
    fig, ax = plt.subplots(figsize=(max(6, len(pairs) * 1.3), 3.4))
    width = 0.8 / max(1, len(evals))
    for i, (name, e) in enumerate(evals.items()):
        vals = [e["retrieval"].get(p, {}).get(level, {}).get("R@1", float("nan")) for p in pairs]
        ax.bar(np.arange(len(pairs)) + i * width, vals, width, label=name)
    ax.set_xticks(
        np.arange(len(pairs)) + width * (len(evals) - 1) / 2, pairs, rotation=30, ha="right"
    )
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"{level}-level Recall@1")
    ax.legend(fontsize=8)
    return _png(fig)


def _accuracy_bars(evals: dict[str, dict[str, Any]]) -> str:
    import matplotlib.pyplot as plt
    import numpy as np

    kinds = ["fused", "image_only", "text_only", "audio_only"]
    fig, ax = plt.subplots(figsize=(7, 3.4))
    width = 0.8 / max(1, len(evals))
    for i, (name, e) in enumerate(evals.items()):
        vals = [e["accuracy"].get(k) or float("nan") for k in kinds]
        ax.bar(np.arange(len(kinds)) + i * width, vals, width, label=name)
    ax.set_xticks(np.arange(len(kinds)) + width * (len(evals) - 1) / 2, kinds)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("classification accuracy")
    ax.legend(fontsize=8)
    return _png(fig)


def _confusion(e: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt
    import numpy as np

    conf = np.asarray(e["confusion"])
    fig, ax = plt.subplots(figsize=(4.6, 4))
    ax.imshow(conf, cmap="Blues")
    ax.set_xticks(range(len(e["classes"])), e["classes"], rotation=45, ha="right")
    ax.set_yticks(range(len(e["classes"])), e["classes"])
    dark = conf.max() / 2  # above half the scale the cell is dark: white digits stay legible
    for (i, j), v in np.ndenumerate(conf):
        color = "white" if v > dark else "black"
        ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color=color)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return _png(fig)


def _projection(points: dict[str, Any], classes: list[str]) -> str:
    import matplotlib.pyplot as plt
    import numpy as np

    xy, lab = np.asarray(points["xy"]), np.asarray(points["label"])
    fig, ax = plt.subplots(figsize=(5, 4.2))
    for k, name in enumerate(classes):
        sel = lab == k
        ax.scatter(xy[sel, 0], xy[sel, 1], s=8, label=name)
    ax.legend(fontsize=7, markerscale=2)
    ax.set_title("fused embeddings, PCA to 2-D")
    return _png(fig)


def write_html_report(run: str, compare: list[str] | None = None, output: str | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on batch machines
    ev = _load(run, "eval.json")
    if ev is None:
        raise UserError(f"{run} has no eval.json; run mmpipe eval {run} DATA first")
    evals = {f"{ev['fusion']} ({os.path.basename(run.rstrip('/'))})": ev}
    for other in compare or []:
        e = _load(other, "eval.json")
        if e is None:
            raise UserError(f"{other} has no eval.json; run mmpipe eval on it first")
        evals[f"{e['fusion']} ({os.path.basename(other.rstrip('/'))})"] = e
    metrics = _load(run, "metrics.jsonl") or []
    points = _load(run, "eval_points.json")
    best_epoch = (_load(run, "train.json") or {}).get("best_epoch")
    sections = [
        ("Training curves", _curves(metrics, best_epoch), NOTES["curves"]) if metrics else None,
        ("Class-level Recall@1 per modality pair", _recall_bars(evals, "class"), NOTES["class"])
        if any("class" in v for e in evals.values() for v in e["retrieval"].values())
        else None,
        (
            "Instance-level Recall@1 per modality pair",
            _recall_bars(evals, "instance"),
            NOTES["instance"],
        ),
    ]
    if any(e["accuracy"] for e in evals.values()):
        sections.append(
            (
                "Accuracy: fused against single-modality baselines",
                _accuracy_bars(evals),
                NOTES["accuracy"],
            )
        )
    if ev.get("confusion"):
        sections.append(("Confusion matrix (fused)", _confusion(ev), NOTES["confusion"]))
    if points:
        sections.append(("Embedding map", _projection(points, ev["classes"]), NOTES["map"]))
    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{e['rows']}</td><td>{_fmt(e['accuracy'].get('fused'))}</td>"
        f"<td>{_fmt(e['accuracy'].get('best_single'))}</td>"
        f"<td>{_fmt((e.get('baselines') or {}).get('late_fusion'))}</td>"
        f"<td>{_fmt((e.get('baselines') or {}).get('best_probe'))}</td>"
        f"<td>{_paired((e.get('baselines') or {}).get('vs_model'))}</td>"
        f"<td>{_fmt(((e.get('baselines') or {}).get('cca') or {}).get('accuracy'))}</td>"
        f"<td>{_fmt(_min_r1(e))}</td></tr>"
        for n, e in evals.items()
    )
    body = "".join(
        f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='{src}'>"
        f"<p class='note'>{html.escape(note)}</p>"
        for t, src, note in (s for s in sections if s)
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>mmpipe report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}img{{max-width:100%}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 10px}}
.note{{color:#444;margin-top:.2em}}</style></head><body>
<h1>mmpipe run report</h1><p>{html.escape(run)}, split: {html.escape(ev["split"])}</p>
<table><tr><th>run</th><th>rows</th><th>fused acc</th><th>best single-modality acc</th>
<th>late fusion of linear probes</th><th>best linear probe</th>
<th>rows only the model / only the probes got right (McNemar p)</th>
<th>CCA of each modality pair</th>
<th>min R@1 (class, or instance without labels)</th></tr>{rows}</table>
<p class='note'>{html.escape(NOTES["table"])}</p>{body}</body></html>"""
    out = output or join(run, "report.html")
    write_bytes_atomic(out, page.encode())
    return out


# One sentence under each figure: what it shows and which way is better.
NOTES = {
    "table": "Accuracies are on the validation rows; higher is better. The model should beat its "
    "best single modality and stand level with or above the late fusion of linear probes. The "
    "paired column counts the rows only the model, or only the probes, got right, and says "
    "whether that difference is more than chance (McNemar's exact test, p < 0.05). The CCA "
    "column classifies how much each pair of modalities agrees in a shared space fitted on the "
    "training pairs: where the label lives in the relation between modalities (same or "
    "different), it is the bar the model should reach; the probes cannot see such a label.",
    "curves": "Loss on the training batches and on the validation rows (lower is better), and "
    "validation accuracy (higher is better), of the weights the run saves; the dashed line marks "
    "the epoch whose weights model.pt holds, the best by the watched metric.",
    "class": "For each query modality and target modality, the share of queries whose nearest "
    "target in the shared space has the same class; higher is better, 1.0 is perfect.",
    "instance": "The share of queries whose nearest target is the same sample (or one with the same "
    "content); higher is better. Harder than the class level: every other sample competes.",
    "accuracy": "Classification accuracy with every modality, and with one modality alone; the "
    "fused bar should stand above each single one.",
    "confusion": "Rows are the true classes, columns the predicted ones: counts on the diagonal are "
    "right, counts off it are the mistakes; a dark diagonal and a pale rest is better.",
    "map": "The fused embeddings of the validation rows, projected to two dimensions; classes "
    "that form separate clusters are easier to tell apart.",
}


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


def _paired(vs: dict[str, Any] | None) -> str:
    if not vs:
        return "-"
    a, b, p = vs["model_only_right"], vs["probes_only_right"], vs["p_value"]
    ahead = "model" if a > b else "probes"
    words = "no significant difference" if p >= 0.05 else f"the {ahead} significantly ahead"
    return f"{a} / {b} (p {p:.2g}: {words})"
