"""Captions with no labels: train contrastive-only at the defaults, eval scores Recall@K."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.fusion.artifact import Lineage, ModelInfo
from pipeline.train.config import TrainConfig
from pipeline.train.evaluate import score, summary_line
from pipeline.train.job import without_absent_labels


def test_the_default_label_field_absent_everywhere_turns_the_classifier_off(capsys):
    cfg = TrainConfig(data="d", output="o")
    off = without_absent_labels(cfg, [], quiet=False)
    assert off.label_field is None and off.w_contrastive > 0
    assert "training contrastive-only" in capsys.readouterr().err
    assert without_absent_labels(cfg, ["a", "b"], quiet=True).label_field == "label"
    # A field the user named, and no sample has, is a mistake: one line with the fix.
    with pytest.raises(UserError, match=r"label_field 'kind' is in no sample.*null"):
        without_absent_labels(cfg.model_copy(update={"label_field": "kind"}), [], quiet=True)
    # Classification was all that was asked for: nothing is left to train.
    with pytest.raises(UserError, match="label_field 'label'"):
        without_absent_labels(cfg.model_copy(update={"w_contrastive": 0.0}), [], quiet=True)


def _info(label_field: str | None) -> ModelInfo:
    return ModelInfo(
        fusion="late",
        preset=None,
        fusion_type="late",
        image_size=0,
        max_text_tokens=16,
        dims={"image": 4, "text": 4},
        d_model=8,
        embed_dim=4,
        classes=[],
        label_field=label_field,
        dropout=0.0,
        lineage=Lineage("f", "fp", "", {}, {}),
    )


def test_without_labels_every_row_is_a_query_scored_by_its_own_pair():
    rng = np.random.default_rng(0)
    n = 20
    image = rng.normal(size=(n, 4))
    text = image + 0.01 * rng.normal(size=(n, 4))  # each caption next to its own image
    rows = {
        "keys": [f"k{i}" for i in range(n)],
        "labels": np.full(n, -1),
        "attrs": [None] * n,
        "logits": np.zeros((0, 0)),
        "emb_image": image / np.linalg.norm(image, axis=1, keepdims=True),
        "emb_text": text / np.linalg.norm(text, axis=1, keepdims=True),
        "has_image": np.ones(n, bool),
        "has_text": np.ones(n, bool),
    }
    result = score(rows, _info(None))
    entry = result["retrieval"]["image->text"]
    assert entry["queries"] == n and "class" not in entry
    assert entry["instance"]["R@1"] == 1.0 and result["accuracy"] == {}
    line = summary_line({**result, "fusion": "late", "split": "val"})
    assert "instance R@1 min 1.000" in line
    json.dumps(result)  # eval.json takes it as it is


@pytest.mark.slow
@pytest.mark.timeout(900)  # build, features, Ray Train and eval: ~4 min here when alone
@pytest.mark.usefixtures("ray_local")
def test_a_captioned_corpus_without_labels_trains_and_evaluates_by_recall(tmp_path):
    from pipeline.build.job import run_build
    from pipeline.config import BuildConfig
    from pipeline.features.config import load_features_config
    from pipeline.features.job import run_features
    from pipeline.sample_corpus import write_corpus
    from pipeline.train.config import load_train_config
    from pipeline.train.evaluate import run_eval
    from pipeline.train.job import run_train

    write_corpus(str(tmp_path / "c"), n=48, seed=5, broken=False)
    manifest = tmp_path / "c" / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    manifest.write_text(
        "".join(
            json.dumps({"key": r["key"], "image": r["image"], "text": r["text"]}) + "\n"
            for r in rows
        )
    )
    run_build(BuildConfig(input=str(manifest), output=str(tmp_path / "b")), quiet=True)
    fcfg = {"shards": str(tmp_path / "b"), "output": str(tmp_path / "f"), "actor_num_cpus": 0.5}
    run_features(load_features_config(fcfg), quiet=True)
    tcfg = {
        "data": str(tmp_path / "f"),
        "output": str(tmp_path / "run"),
        "epochs": 2,
        "batch_size": 8,
        "workers": 1,
        "cpus_per_worker": 1,
    }
    run_train(load_train_config(tcfg), quiet=True)  # label_field is left at its default
    info = json.loads((tmp_path / "run" / "model.json").read_text())
    assert info["label_field"] is None and info["classes"] == []
    ev = run_eval(str(tmp_path / "run"), str(tmp_path / "f"), quiet=True)
    entry = ev["retrieval"]["image->text"]
    assert entry["queries"] == ev["rows"] > 0 and "class" not in entry
    assert 0.0 <= entry["instance"]["R@1"] <= 1.0 and ev["accuracy"] == {}
