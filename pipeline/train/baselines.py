"""Simple baselines beside the trained model: a linear probe per modality and their late fusion."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

# Probes are fitted in memory on the driver: a cap keeps that bounded whatever the corpus.
# The first rows of the training split in file order (deterministic), up to this many.
MAX_TRAIN_ROWS = 20_000
L2 = 1e-3  # weight decay of the probes, on standardised features
STEPS = 200  # L-BFGS iterations at most; it stops earlier once the loss stops moving


def collect(
    batches: Iterator[tuple[Any, ...]], limit: int, labelled_only: bool = True
) -> dict[str, Any]:
    """Input features, masks and labels of the labelled rows (or of every row), up to
    ``limit`` rows."""
    out: dict[str, list[Any]] = {"labels": [], "keys": []}
    n = 0
    for keys, _metas, feats, masks, labels in batches:
        keep = labels.numpy() >= 0 if labelled_only else np.ones(len(keys), bool)
        if not keep.any():
            continue
        take = np.flatnonzero(keep)[: limit - n]
        out["labels"].append(labels.numpy()[take])
        out["keys"].append(np.asarray(keys, dtype=object)[take])
        for m in feats:
            out.setdefault(f"x_{m}", []).append(feats[m].numpy()[take])
            out.setdefault(f"has_{m}", []).append(masks[m].numpy()[take])
        n += len(take)
        if n >= limit:
            break
    return {k: np.concatenate(v) for k, v in out.items() if v}


def fit_probe(x: np.ndarray, y: np.ndarray, n_classes: int) -> Any:
    """A multinomial logistic regression on standardised features (full-batch L-BFGS, L2,
    from zero weights: deterministic, no seed); returns ``predict(x) -> log-probabilities``."""
    import torch

    xt = torch.from_numpy(np.asarray(x, np.float32))
    mean, std = xt.mean(0), xt.std(0).clamp(min=1e-6)
    xs = (xt - mean) / std
    yt = torch.from_numpy(np.asarray(y, np.int64))
    lin = torch.nn.Linear(xs.shape[1], n_classes)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=STEPS, line_search_fn="strong_wolfe")

    def closure() -> Any:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xs), yt) + L2 * lin.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)

    def predict(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            zt = (torch.from_numpy(np.asarray(z, np.float32)) - mean) / std
            return torch.log_softmax(lin(zt), dim=1).numpy()

    return predict


def probe_baselines(
    train: Iterator[tuple[Any, ...]],
    val: Iterator[tuple[Any, ...]],
    n_classes: int,
    model_correct: Mapping[str, bool] | None = None,
) -> dict[str, Any]:
    """Accuracy on ``val`` of one probe per modality (on the rows that have it) and of late
    fusion: the probes' log-probabilities summed over the modalities each row has. With
    ``model_correct`` (validation key -> the model was right), also the paired comparison of
    the model with the late fusion on the same rows (``vs_model``)."""
    tr = collect(train, MAX_TRAIN_ROWS)
    va = collect(val, 1 << 62)
    if not tr or not va:
        return {}
    mods = [k[2:] for k in tr if k.startswith("x_")]
    prior = np.bincount(tr["labels"], minlength=n_classes) + 1.0
    fused = np.tile(np.log(prior / prior.sum()), (len(va["labels"]), 1))
    out: dict[str, Any] = {"train_rows": len(tr["labels"]), "probe": {}}
    for m in mods:
        sel = tr[f"has_{m}"]
        if sel.sum() < 2 or len(np.unique(tr["labels"][sel])) < 2:
            out["probe"][m] = None
            continue
        predict = fit_probe(tr[f"x_{m}"][sel], tr["labels"][sel], n_classes)
        has = va[f"has_{m}"]
        if not has.any():
            out["probe"][m] = None
            continue
        logp = predict(va[f"x_{m}"][has])
        out["probe"][m] = float((logp.argmax(1) == va["labels"][has]).mean())
        # Each probe's own prior is in its log-probabilities: take it out once per modality,
        # so that a row with three modalities does not count the class frequencies thrice.
        fused[has] += logp - np.log(prior / prior.sum())
    right = fused.argmax(1) == va["labels"]
    out["late_fusion"] = float(right.mean())
    if model_correct is not None:
        out["vs_model"] = paired(model_correct, dict(zip(va["keys"], right.tolist())))
    singles = [v for v in out["probe"].values() if v is not None]
    out["best_probe"] = max(singles) if singles else None
    return out


def paired(model: Mapping[str, bool], probes: Mapping[str, bool]) -> dict[str, Any]:
    """The model against the probes on the rows both scored: the rows only one of them got
    right, and McNemar's exact two-sided p-value. A gap of a few rows on a few hundred is
    noise; this says how much."""
    both = model.keys() & probes.keys()
    b = sum(model[k] and not probes[k] for k in both)
    c = sum(probes[k] and not model[k] for k in both)
    return {
        "rows": len(both),
        "model_only_right": b,
        "probes_only_right": c,
        "p_value": mcnemar(b, c),
    }


def mcnemar(b: int, c: int) -> float:
    """Exact McNemar: under "equally good", the b + c discordant rows split as fair coin flips.
    The binomial tail is summed in log space, term to term, so any row count is fast."""
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    i = np.arange(k)
    steps = np.log((n - i) / (i + 1))  # C(n, i+1) / C(n, i)
    log_terms = -n * math.log(2) + np.concatenate([[0.0], np.cumsum(steps)])
    top = float(log_terms.max())
    return min(1.0, 2 * math.exp(top) * float(np.exp(log_terms - top).sum()))
