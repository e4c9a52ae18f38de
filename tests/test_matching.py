"""Relations: classes that mark matching pairs are found, and a model with them reads a label
that lives in how two modalities relate; corpora whose modalities carry the label alone are
left as they were."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from pipeline.train.config import TrainConfig
from pipeline.train.loop import fit_local
from pipeline.train.matching import find_relations
from tests.test_baselines import _association, _batches

DIMS = {"image": 24, "audio": 24}


def _independent(n: int, seed: int):
    """Both modalities are noisy views of the class (one of 10): each carries the label."""
    protos = np.random.default_rng(0).normal(0, 1, (2, 10, 24))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = {
        m: (protos[i][y] + 0.3 * rng.normal(size=(n, 24))).astype(np.float32)
        for i, m in enumerate(DIMS)
    }
    return x, {m: np.ones(n, dtype=bool) for m in x}, y.astype(np.int64)


def test_the_classes_that_mark_matching_pairs_are_found_and_no_others():
    x, has, y = _association(1500, 1)  # label 1: the digit seen is the digit heard
    found = find_relations(_batches(x, has, y), ["different", "same"])
    assert found is not None
    assert found.classes == ["same"] and found.class_ids == [1]
    assert found.pairs == ("image~audio",)
    assert found.scores["same"] > 0.5 > 0.1 > found.scores["different"]
    # Each modality carries the label: within a class nothing pairs, so no relation.
    x, has, y = _independent(1500, 1)
    assert find_relations(_batches(x, has, y), [str(c) for c in range(10)]) is None
    # Unlabelled rows, or one class, say nothing about matching.
    assert find_relations(_batches(x, has, np.full_like(y, -1)), ["a", "b"]) is None


def test_a_corpus_sorted_by_label_still_shows_every_class(monkeypatch):
    import pipeline.train.matching as matching

    x, has, y = _association(1500, 1)
    order = np.argsort(y, kind="stable")  # every "different" row first
    x, has, y = {m: v[order] for m, v in x.items()}, {m: v[order] for m, v in has.items()}, y[order]
    monkeypatch.setattr(matching, "MAX_ROWS", 600)  # fewer rows kept than "different" has
    found = matching.find_relations(_batches(x, has, y), ["different", "same"])
    assert found is not None and found.classes == ["same"]


def _table(x, has, y) -> pa.Table:
    n = len(y)
    cols: dict = {"key": [f"k{i}" for i in range(n)], "meta": [json.dumps({})] * n}
    for m, v in x.items():
        cols[f"{m}_emb"] = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])
        cols[f"has_{m}"] = has[m]
    cols["label"] = pa.array(y, pa.int64())
    return pa.table(cols)


def test_a_model_with_relations_reads_a_label_that_lives_in_the_relation():
    train, val = _association(1500, 1), _association(400, 2)
    relations = find_relations(_batches(*train), ["different", "same"])
    cfg = TrainConfig(data="x", output="y", d_model=32, embed_dim=16, epochs=15, seed=0)
    scores = {}
    for name, rel in (("without", None), ("with", relations)):
        tr = fit_local(cfg, _table(*train), _table(*val), DIMS, 2, relations=rel)
        scores[name] = tr.progress.best_metrics["val_acc"]
    # Chance is 0.5; eval's CCA baseline reaches ~0.9 on this world (test_baselines.py).
    assert scores["without"] < 0.62
    assert scores["with"] > 0.85, scores
