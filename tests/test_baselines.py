"""The linear-probe baselines of `mmpipe eval`, without Ray: probes and their late fusion."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.train.baselines import fit_probe, probe_baselines


def _batches(x: dict[str, np.ndarray], has: dict[str, np.ndarray], y: np.ndarray, size: int = 64):
    for i in range(0, len(y), size):
        sl = slice(i, i + size)
        feats = {m: torch.from_numpy(v[sl]) for m, v in x.items()}
        masks = {m: torch.from_numpy(v[sl]) for m, v in has.items()}
        yield (
            [f"k{j}" for j in range(i, i + len(y[sl]))],
            [None] * len(y[sl]),
            feats,
            masks,
            (torch.from_numpy(y[sl])),
        )


def _world(n: int, seed: int):
    """Two modalities, each showing the class on its own half of the rows only: alone each
    is weak, together they hold it almost everywhere."""
    centers = np.random.default_rng(0).normal(0, 3, (2, 4, 16))  # the same in every split
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x, has = {}, {}
    for i, m in enumerate(("image", "text")):
        shows = (np.arange(n) % 2) == i
        mean = np.where(shows[:, None], centers[i][y], 0.0)
        x[m] = (mean + rng.normal(0, 1, (n, 16))).astype(np.float32)
        has[m] = np.ones(n, dtype=bool)
    has["text"][::7] = False  # a missing modality is left out of its probe and of the sum
    return x, has, y.astype(np.int64)


def test_a_probe_fits_separable_classes():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = np.eye(3)[y] * 5 + rng.normal(0, 0.5, (300, 3))
    predict = fit_probe(x, y, 3)
    logp = predict(x)
    assert logp.shape == (300, 3) and (logp.argmax(1) == y).mean() == 1.0
    np.testing.assert_allclose(np.exp(logp).sum(1), 1.0, atol=1e-5)


def test_late_fusion_of_two_weak_probes_beats_either():
    xt, ht, yt = _world(1200, 1)
    xv, hv, yv = _world(400, 2)
    out = probe_baselines(_batches(xt, ht, yt), _batches(xv, hv, yv), 4)
    assert out["train_rows"] == 1200 and set(out["probe"]) == {"image", "text"}
    assert all(0.45 < v < 0.75 for v in out["probe"].values()), out  # each: about half + chance
    assert out["late_fusion"] > out["best_probe"] + 0.15, out
