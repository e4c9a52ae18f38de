"""`mmpipe eval`: cross-modal Recall@K, accuracy, single-modality and linear-probe baselines."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from pipeline.errors import UserError
from pipeline.fusion.artifact import ModelInfo, RunArtifact
from pipeline.io.fs import join, read_bytes, write_bytes_atomic
from pipeline.progress import Progress
from pipeline.train.data import open_features, split_batches

# Generating attributes that say what a sample shows; two captions with equal values describe
# the same content (the same text, a paraphrase or a translation).
INSTANCE_FIELDS = ("label", "color", "size", "position")
KS = (1, 5, 10)


def embed_rows(
    model: Any, info: ModelInfo, data: str, split: str, fraction: float
) -> dict[str, Any]:
    """Stream one split of a features directory through the model; keep only the outputs."""
    import torch

    dims = info.dims
    acc: dict[str, list[Any]] = {
        "keys": [],
        "labels": [],
        "attrs": [],
        "fused": [],
        "logits": [],
        **{f"emb_{m}": [] for m in dims},
        **{f"has_{m}": [] for m in dims},
        **{f"logits_only_{m}": [] for m in dims},
    }
    with torch.no_grad():
        for keys, metas, feats, masks, labels in _batches(info, data, split, fraction):
            out = model(feats, masks)
            acc["keys"] += keys
            acc["labels"].append(labels.numpy())
            acc["attrs"] += [_attrs(m) for m in metas]
            acc["fused"].append(out["fused"].numpy())
            for m in dims:
                acc[f"emb_{m}"].append(out["emb"][m].numpy())
                acc[f"has_{m}"].append(masks[m].numpy())
            if "logits" in out:
                acc["logits"].append(out["logits"].numpy())
                for m in dims:  # the single-modality baseline: only m is given to the model
                    only = {k: (v & (k == m)) for k, v in masks.items()}
                    acc[f"logits_only_{m}"].append(model(feats, only)["logits"].numpy())
    if not acc["keys"]:
        raise UserError(f"eval: the {split} split of {data} is empty")
    return {
        k: (np.concatenate(v) if v and isinstance(v[0], np.ndarray) else v) for k, v in acc.items()
    }


def _batches(info: ModelInfo, data: str, split: str, fraction: float) -> Iterator[tuple[Any, ...]]:
    """(keys, metas, inputs, masks, labels) of one split: features rows, or for an end-to-end
    preset the shards preprocessed as in training."""
    dims, label_field = info.dims, info.label_field
    if info.preset:
        from pipeline.io.shards import resolve_shards
        from pipeline.train.presets import E2EPreprocess, e2e_tensors, iter_e2e

        stage = E2EPreprocess(
            split,
            fraction,
            info.classes,
            label_field,
            info.image_size,
            info.max_text_tokens,
        )
        for b in iter_e2e(resolve_shards(data), stage):
            yield ([str(k) for k in b["key"]], list(b["meta"]), *e2e_tensors(b, dims, "cpu"))
        return
    fs_ = open_features(data, list(dims), None)
    yield from split_batches(fs_, split, fraction, label_field, info.classes)


def _attrs(meta: str | None) -> tuple[Any, ...] | None:
    try:
        d = json.loads(meta or "{}")
    except ValueError:
        return None
    if not all(f in d for f in INSTANCE_FIELDS):
        return None
    return tuple(d[f] for f in INSTANCE_FIELDS)


def recall_at_k(
    q: np.ndarray, g: np.ndarray, hit: np.ndarray, ks: tuple[int, ...] = KS
) -> dict[str, float]:
    """Recall@K: the share of queries with a hit (``hit[i, j]``) among their top K by cosine."""
    if len(q) == 0 or len(g) == 0:
        return {f"R@{k}": float("nan") for k in ks}
    order = np.argsort(-(q @ g.T), axis=1, kind="stable")[:, : max(ks)]
    hits = np.take_along_axis(hit, order, axis=1)
    return {f"R@{k}": float(hits[:, :k].any(axis=1).mean()) for k in ks}


def score(rows: dict[str, Any], info: ModelInfo) -> dict[str, Any]:
    mods = list(info.dims)
    labels = rows["labels"]
    attrs = rows["attrs"]
    keys = np.asarray(rows["keys"])
    result: dict[str, Any] = {"rows": len(keys), "retrieval": {}, "accuracy": {}}
    labelled = info.label_field is not None
    for a in mods:
        for b in mods:
            if a == b:
                continue
            # With no labels (captions only), every row is a query, scored by its own pair.
            qi = np.flatnonzero(rows[f"has_{a}"] & ((labels >= 0) | (not labelled)))
            gi = np.flatnonzero(rows[f"has_{b}"])
            q, g = rows[f"emb_{a}"][qi], rows[f"emb_{b}"][gi]
            entry: dict[str, Any] = {"queries": len(qi)}
            if labelled:
                entry["class"] = recall_at_k(q, g, labels[qi][:, None] == labels[gi][None, :])
            if all(attrs[i] is not None for i in qi) and all(attrs[j] is not None for j in gi):
                ids: dict[Any, int] = {}
                aid = np.array([ids.setdefault(x, len(ids)) for x in attrs])
                same = aid[qi][:, None] == aid[gi][None, :]
            else:  # no generating attributes: only the paired item itself counts
                same = keys[qi][:, None] == keys[gi][None, :]
            entry["instance"] = recall_at_k(q, g, same)
            result["retrieval"][f"{a}->{b}"] = entry
    known = labels >= 0
    if len(rows["logits"]) and known.any():
        pred = rows["logits"].argmax(1)
        result["accuracy"]["fused"] = float((pred[known] == labels[known]).mean())
        n = len(info.classes)
        conf = np.zeros((n, n), dtype=np.int64)
        np.add.at(conf, (labels[known], pred[known]), 1)
        result["confusion"] = conf.tolist()
        for m in mods:
            sel = known & rows[f"has_{m}"]
            p = rows[f"logits_only_{m}"].argmax(1)
            result["accuracy"][f"{m}_only"] = (
                float((p[sel] == labels[sel]).mean()) if sel.any() else None
            )
        singles = [
            v for k, v in result["accuracy"].items() if k.endswith("_only") and v is not None
        ]
        result["accuracy"]["best_single"] = max(singles) if singles else None
    return result


def pca_2d(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


def run_eval(run_dir: str, data: str, *, split: str = "val", quiet: bool = False) -> dict[str, Any]:
    """Write ``RUN_DIR/eval.json`` (and ``eval_points.json`` for the report's projection)."""
    with Progress("eval", quiet=quiet) as progress:
        art = RunArtifact.open(run_dir)
        model, info = art.load(), art.info
        fraction = json.loads(read_bytes(join(run_dir, "config.json"))).get("val_fraction", 0.2)
        progress.phase(f"scoring the model on the {split} split")
        rows = embed_rows(model, info, data, split, fraction)
        result = {
            "run": run_dir,
            "data": data,
            "split": split,
            "fusion": info.fusion,
            "classes": info.classes,
            **score(rows, info),
        }
        if info.classes and not info.preset:  # probes read input features: a preset has none
            from pipeline.train.baselines import probe_baselines

            progress.phase("fitting the linear probes beside it")
            known = rows["labels"] >= 0
            right = rows["logits"].argmax(1) == rows["labels"]  # a model with classes has logits
            model_correct = dict(
                zip(np.asarray(rows["keys"])[known].tolist(), right[known].tolist())
            )
            result["baselines"] = probe_baselines(
                _batches(info, data, "train", fraction),
                _batches(info, data, split, fraction),
                len(info.classes),
                model_correct,
            )
        if not info.preset:  # a shared-space baseline: what agreement between modalities tells
            from pipeline.train.cca import cca_baseline

            progress.phase("fitting CCA on each modality pair")
            cca = cca_baseline(
                _batches(info, data, "train", fraction),
                _batches(info, data, split, fraction),
                len(info.classes or []),
            )
            if cca:
                result.setdefault("baselines", {})["cca"] = cca
    write_bytes_atomic(join(run_dir, "eval.json"), json.dumps(result, indent=2).encode())
    pts = pca_2d(rows["fused"][:3000])
    points = {"xy": pts.round(4).tolist(), "label": rows["labels"][:3000].tolist()}
    write_bytes_atomic(join(run_dir, "eval_points.json"), json.dumps(points).encode())
    if not quiet:
        print(summary_line(result), file=sys.stderr)
    return result


def summary_line(r: dict[str, Any]) -> str:
    acc = r["accuracy"]
    parts = [f"eval ({r['fusion']}, {r['rows']} {r['split']} rows):"]
    if acc:
        parts.append(f"acc fused {acc['fused']:.3f}, best single {acc['best_single']:.3f};")
    base = r.get("baselines") or {}
    if base.get("best_probe") is not None:
        parts.append(
            f"linear probes: late fusion {base['late_fusion']:.3f}, best {base['best_probe']:.3f};"
        )
        if vs := base.get("vs_model"):
            parts.append(
                f"rows only the model / only the probes got right: {vs['model_only_right']} / "
                f"{vs['probes_only_right']} (McNemar p {vs['p_value']:.2g});"
            )
    cca = base.get("cca") or {}
    if cca.get("accuracy") is not None:
        parts.append(f"CCA of each modality pair: {cca['accuracy']:.3f};")
    elif cca.get("recall@1"):
        best = max(cca["recall@1"].items(), key=lambda kv: kv[1])
        parts.append(f"CCA R@1 best {best[1]:.3f} ({best[0]});")
    level = "class" if any("class" in v for v in r["retrieval"].values()) else "instance"
    worst = min(((v[level]["R@1"], k) for k, v in r["retrieval"].items()), default=None)
    if worst:
        parts.append(f"{level} R@1 min {worst[0]:.3f} ({worst[1]})")
    if "image->text" in r["retrieval"]:
        parts.append(
            f"; instance image->text R@1 {r['retrieval']['image->text']['instance']['R@1']:.3f}"
        )
    return " ".join(parts)
