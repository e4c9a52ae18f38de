"""The linear-probe baselines of `mmpipe eval`, without Ray: probes and their late fusion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.train.baselines import fit_probe, mcnemar, probe_baselines


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


def test_mcnemar_exact_values():
    assert mcnemar(0, 0) == 1.0 and mcnemar(5, 5) == 1.0
    assert mcnemar(10, 0) == pytest.approx(2 / 2**10, rel=1e-12) == mcnemar(0, 10)
    # 8 against 2 of 10 discordant rows: 2 * P(X <= 2), X ~ Binomial(10, 1/2) = 2 * 56 / 1024
    assert mcnemar(8, 2) == pytest.approx(112 / 1024, rel=1e-12)
    # large counts stay finite and match the exact sum of binomial coefficients
    exact = 2 * sum(math.comb(3000, i) for i in range(1451)) / 2**3000
    assert mcnemar(1450, 1550) == pytest.approx(exact, rel=1e-9)


def test_the_model_is_compared_with_the_late_fusion_row_by_row():
    xt, ht, yt = _world(1200, 1)
    xv, hv, yv = _world(400, 2)

    def vs(model: dict) -> dict:
        return probe_baselines(_batches(xt, ht, yt), _batches(xv, hv, yv), 4, model)

    base = probe_baselines(_batches(xt, ht, yt), _batches(xv, hv, yv), 4)
    assert "vs_model" not in base
    wrong = round((1 - base["late_fusion"]) * 400)
    always = vs({f"k{j}": True for j in range(400)})["vs_model"]
    assert always == {
        "rows": 400,
        "model_only_right": wrong,
        "probes_only_right": 0,
        "p_value": mcnemar(wrong, 0),
    }
    never = vs({f"k{j}": False for j in range(400)})["vs_model"]
    assert (never["model_only_right"], never["probes_only_right"]) == (0, 400 - wrong)
    # only the keys both scored are paired
    assert vs({"k0": True, "nope": True})["vs_model"]["rows"] == 1


def _association(n: int, seed: int):
    """An image and a sound of digits 0-9 (each read reliably alone); the label is whether
    they show the same digit: each modality alone is at chance for it, and so are its probes."""
    protos = np.random.default_rng(0).normal(0, 1, (2, 10, 24))  # the same in every split
    rng = np.random.default_rng(seed)
    d_img = rng.integers(0, 10, n)
    same = rng.random(n) < 0.5
    d_aud = np.where(same, d_img, (d_img + rng.integers(1, 10, n)) % 10)
    x = {
        "image": (protos[0][d_img] + 0.3 * rng.normal(size=(n, 24))).astype(np.float32),
        "audio": (protos[1][d_aud] + 0.3 * rng.normal(size=(n, 24))).astype(np.float32),
    }
    has = {m: np.ones(n, dtype=bool) for m in x}
    return x, has, same.astype(np.int64)


def test_cca_sees_a_relation_that_the_probes_cannot():
    from pipeline.train.cca import cca_baseline

    xt, ht, yt = _association(1500, 1)
    xv, hv, yv = _association(400, 2)
    probes = probe_baselines(_batches(xt, ht, yt), _batches(xv, hv, yv), 2)
    assert probes["late_fusion"] < 0.62  # chance is 0.5: neither modality holds the label
    cca = cca_baseline(_batches(xt, ht, yt), _batches(xv, hv, yv), 2)
    assert cca["accuracy"] > 0.85 and cca["pairs"] == ["image~audio"]
    # Without labels: one CCA on all pairs, scored by Recall@1 across the pair.
    unlabelled = np.full_like(yt, -1)
    same = np.ones_like(yv)
    xs = {m: v.copy() for m, v in xv.items()}
    cca = cca_baseline(_batches(xt, ht, unlabelled), _batches(xs, hv, same * -1), 0)
    assert set(cca["recall@1"]) == {"image->audio"} and 0 <= cca["recall@1"]["image->audio"] <= 1
