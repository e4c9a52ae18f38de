"""A shared-space baseline beside the model: CCA between each pair of modalities' input features.

Linear probes read each modality alone, so a label that lives in how two modalities relate
(a spoken digit that is or is not the written one) is out of their reach, and so is it out of
their late fusion. Canonical correlation analysis finds the directions in which two
modalities agree; the cosine of a pair in that space is the simplest measure of agreement.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import combinations
from typing import Any

import numpy as np

from pipeline.train.baselines import MAX_TRAIN_ROWS, collect, fit_probe

PCA_DIMS = 64  # each modality is reduced to this many principal directions first
COMPONENTS = 16  # canonical directions kept
RIDGE = 1e-3  # added to each whitened covariance: stable with few rows
MIN_ROWS = 10  # rows a CCA needs (per class, per pair) to be fitted at all


def fit_cca(x: np.ndarray, y: np.ndarray) -> Any:
    """Regularised CCA of ``x`` and ``y`` (rows paired); returns ``project(x, y) -> (u, v)``."""
    mx, a, my, b = cca_arrays(x, y)
    return lambda xs, ys: ((xs - mx) @ a, (ys - my) @ b)


def cca_arrays(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """The CCA of ``x`` and ``y`` as arrays ``(mean_x, a, mean_y, b)``: ``(x - mean_x) @ a``
    and ``(y - mean_y) @ b`` are the canonical coordinates, at most COMPONENTS of them."""
    mx, my = x.mean(0), y.mean(0)

    def basis(z: np.ndarray) -> np.ndarray:  # principal directions, at most PCA_DIMS
        # A randomised range finder (Halko et al.), seeded: O(rows x dims x PCA_DIMS) where a
        # full SVD of 20,000 rows of 6,400 image features would take minutes on 2 cores.
        k = min(PCA_DIMS, len(z) - 1, z.shape[1])
        g = np.random.default_rng(0).normal(size=(z.shape[1], min(k + 10, z.shape[1])))
        q, _ = np.linalg.qr(z @ g)
        q, _ = np.linalg.qr(z @ (z.T @ q))  # one power iteration sharpens the top directions
        _, _, vt = np.linalg.svd(q.T @ z, full_matrices=False)
        return np.asarray(vt[:k].T)

    px, py = basis(x - mx), basis(y - my)
    xp, yp = (x - mx) @ px, (y - my) @ py
    n = len(x)

    def inv_sqrt(c: np.ndarray) -> np.ndarray:
        w, v = np.linalg.eigh(c + RIDGE * np.trace(c) / len(c) * np.eye(len(c)))
        return np.asarray((v / np.sqrt(np.maximum(w, 1e-12))) @ v.T)

    wx, wy = inv_sqrt(xp.T @ xp / n), inv_sqrt(yp.T @ yp / n)
    u, _, vt = np.linalg.svd(wx @ (xp.T @ yp / n) @ wy)
    k = min(COMPONENTS, u.shape[1], vt.shape[0])
    return mx, px @ wx @ u[:, :k], my, py @ wy @ vt.T[:, :k]


def cosine(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1)
    return np.asarray((u * v).sum(1) / np.maximum(norm, 1e-12))


def _agreement(tr: dict[str, Any], rows: dict[str, Any], a: str, b: str, sel: np.ndarray) -> Any:
    """Cosines in the CCA space fitted on ``tr``'s rows ``sel``, for every row of ``rows``
    (0 where a row lacks a or b); None when too few rows to fit."""
    if sel.sum() < MIN_ROWS:
        return None
    project = fit_cca(tr[f"x_{a}"][sel], tr[f"x_{b}"][sel])
    both = rows[f"has_{a}"] & rows[f"has_{b}"]
    out = np.zeros(len(both), np.float32)
    if both.any():
        out[both] = cosine(*project(rows[f"x_{a}"][both], rows[f"x_{b}"][both]))
    return out


def cca_baseline(
    train: Iterator[tuple[Any, ...]], val: Iterator[tuple[Any, ...]], n_classes: int
) -> dict[str, Any]:
    """With classes: per pair of modalities, a linear probe on the shared space: the pair's
    canonical coordinates, and its cosine under one CCA per class fitted on that class's
    training pairs (where a class marks the matching pairs, that cosine is what tells them
    apart); its accuracy on ``val``. Without
    classes: one CCA per pair on all training pairs, and Recall@1 across the pair on ``val``."""
    labelled = n_classes > 0
    tr = collect(train, MAX_TRAIN_ROWS, labelled_only=labelled)
    va = collect(val, 1 << 62, labelled_only=labelled)
    if not tr or not va:
        return {}
    mods = [k[2:] for k in tr if k.startswith("x_")]
    pairs = list(combinations(mods, 2))
    if not labelled:
        recall = {}
        for a, b in pairs:
            both = va[f"has_{a}"] & va[f"has_{b}"]
            sel = tr[f"has_{a}"] & tr[f"has_{b}"]
            if sel.sum() < MIN_ROWS or both.sum() < 2:
                continue
            u, v = fit_cca(tr[f"x_{a}"][sel], tr[f"x_{b}"][sel])(
                va[f"x_{a}"][both], va[f"x_{b}"][both]
            )
            u /= np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
            v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
            recall[f"{a}->{b}"] = float(((u @ v.T).argmax(1) == np.arange(len(u))).mean())
        return {"recall@1": recall} if recall else {}
    # Train rows get their cosines from the CCA of the other half (two folds): a CCA scores
    # the rows it was fitted on too well, and the probe would learn that optimism.
    half = np.arange(len(tr["labels"])) % 2 == 0
    f_tr: list[np.ndarray] = []
    f_va: list[np.ndarray] = []
    used: list[str] = []
    for a, b in pairs:
        both = tr[f"has_{a}"] & tr[f"has_{b}"]
        if both.sum() >= MIN_ROWS:  # the pair's shared coordinates, for labels each side holds
            project = fit_cca(tr[f"x_{a}"][both], tr[f"x_{b}"][both])
            for rows, out in ((tr, f_tr), (va, f_va)):
                has = rows[f"has_{a}"] & rows[f"has_{b}"]
                u, v = project(rows[f"x_{a}"], rows[f"x_{b}"])
                out.extend(np.where(has[:, None], np.concatenate([u, v], 1), 0.0).T)
        for c in range(n_classes):
            mine = both & (tr["labels"] == c)
            col_va = _agreement(tr, va, a, b, mine)
            fold_a, fold_b = (
                _agreement(tr, tr, a, b, mine & half),
                _agreement(tr, tr, a, b, mine & ~half),
            )
            if col_va is None or fold_a is None or fold_b is None:
                continue
            f_tr.append(np.where(half, fold_b, fold_a))
            f_va.append(col_va)
            used.append(f"{a}~{b}")
    if not f_tr:
        return {}
    predict = fit_probe(np.stack(f_tr, 1), tr["labels"], n_classes)
    right = predict(np.stack(f_va, 1)).argmax(1) == va["labels"]
    return {
        "accuracy": float(right.mean()),
        "pairs": sorted(set(used)),
        "components": COMPONENTS,
        "train_rows": len(tr["labels"]),
    }
