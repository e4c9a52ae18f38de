"""mmpipe features on a local Ray over shards built by mmpipe build: values, schema, readers, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.build.job import run_build
from pipeline.config import BuildConfig
from pipeline.errors import UserError
from pipeline.features.config import load_features_config
from pipeline.features.job import run_features
from pipeline.sample_corpus import write_corpus
from tests import media

pytestmark = pytest.mark.usefixtures("ray_local")


def features_cfg(shards, out, **kw):
    base = {
        "shards": str(shards),
        "output": str(out),
        "actor_num_cpus": 0.5,
        "batch_size": 8,
        "audio_frames": 100,
    }
    base.update(kw)
    return load_features_config(base)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("fcorpus")
    write_corpus(str(root / "c"), n=12, seed=4, broken=False)
    out = root / "build"
    run_build(
        BuildConfig(input=str(root / "c" / "manifest.jsonl"), output=str(out), shard_samples=5),
        quiet=True,
    )
    return out


@pytest.fixture(scope="module")
def features(built, tmp_path_factory):
    out = tmp_path_factory.mktemp("feat") / "f"
    report = run_features(features_cfg(built, out), quiet=True)
    return out, report


def read_all(out: Path) -> pa.Table:
    return pq.read_table(sorted((out / "parts").rglob("*.parquet")))


def test_every_built_sample_has_features(built, features):
    out, report = features
    table = read_all(out)
    index = pq.read_table(built / "index")
    assert sorted(table["key"].to_pylist()) == sorted(index["key"].to_pylist())
    assert report["counts"] == {"rows": 12, "rejected": 0, "resumed": 0, "rejects_by_reason": {}}
    assert (out / "_SUCCESS").exists()
    # The defaults: grid-pooled EfficientNet-Lite0, MiniLM plus n-grams, audio statistics.
    assert table.schema.field("image_emb").type == pa.list_(pa.float32(), 5 * 1280)
    assert table.schema.field("text_emb").type == pa.list_(pa.float32(), 384 + 1024)
    assert table.schema.field("audio_emb").type == pa.list_(pa.float32(), 768)
    assert all(table["has_image"].to_pylist()) and all(table["has_text"].to_pylist())
    assert any(table["has_audio"].to_pylist())  # every modality the samples hold
    # The build's per-sample metadata travels with the features: labels for training.
    metas = [json.loads(m) for m in table["meta"].to_pylist()]
    assert all(m["key"] == k for m, k in zip(metas, table["key"].to_pylist()))
    assert all(
        m["label"] in ("circle", "square", "triangle", "star", "cross", "diamond") for m in metas
    )
    meta = pq.read_schema(sorted((out / "parts").rglob("*.parquet"))[0]).metadata
    enc = json.loads(meta[b"mmpipe.encoders"])
    assert (
        enc["image"]["encoder"] == "image:efficientnet_lite0+grid"
        and len(enc["image"]["weights"]) == 64
    )


def test_features_equal_a_direct_call_of_the_encoders(built, features):
    import torch
    import webdataset as wds

    from pipeline.models.encoders import audio_encoder, image_encoder, text_encoder
    from pipeline.models.voice import FRONT_END
    from pipeline.preprocess.audio import AudioLogMel, LogMelConfig
    from pipeline.preprocess.image import ImagePreprocess
    from pipeline.preprocess.text import TextTokenize

    out, _ = features
    table = read_all(out)
    cols = ("key", "image_emb", "text_emb", "audio_emb")
    got = {
        k: tuple(np.asarray(x) for x in v) for k, *v in zip(*(table[c].to_pylist() for c in cols))
    }
    samples = list(
        wds.WebDataset(sorted(str(p) for p in (built / "shards").glob("*.tar")), shardshuffle=False)
    )[:4]
    img_enc, txt_enc = image_encoder("efficientnet_lite0", pool="grid"), text_encoder("minilm")
    pix = ImagePreprocess("efficientnet_lite")(
        {"image": [s["jpg"] if "jpg" in s else s["png"] for s in samples]}
    )
    tok = TextTokenize("minilm", max_length=64)({"text": [s["txt"].decode() for s in samples]})
    with torch.inference_mode():
        ie = img_enc.model(torch.from_numpy(pix["pixel_values"])).numpy()
        te = txt_enc.model(
            torch.from_numpy(tok["input_ids"]), torch.from_numpy(tok["attention_mask"])
        ).numpy()
    for s, i, t in zip(samples, ie, te):
        np.testing.assert_allclose(got[s["__key__"]][0], i, atol=1e-4)
        np.testing.assert_allclose(got[s["__key__"]][1][:384], t, atol=1e-4)
    voiced = [s for s in samples if "wav" in s or "flac" in s][:2]
    assert voiced, "the corpus has audio"
    mel = AudioLogMel(LogMelConfig(**{**FRONT_END, "num_frames": 100}))(
        {"audio": np.array([s.get("wav", s.get("flac")) for s in voiced], dtype=object)}
    )["log_mel"]
    with torch.inference_mode():
        ae = audio_encoder().model(torch.from_numpy(mel)).numpy()  # the default: resemblyzer
    for s, a in zip(voiced, ae):
        np.testing.assert_allclose(got[s["__key__"]][2], a, atol=1e-4)


def test_images_decoded_inside_the_encoder_actor_give_the_same_features(built, features, tmp_path):
    # image_decode=gpu is the nvJPEG path on a GPU; without one the actor decodes with Pillow.
    # Either way it must not change the features (the uint8 hand-over is exact).
    out, _ = features
    alt = tmp_path / "f"
    report = run_features(
        features_cfg(built, alt, image_decode="gpu", ignore=["text", "audio"]), quiet=True
    )
    assert report["counts"]["rows"] == 12
    a, b = read_all(out), read_all(alt)
    ref = dict(zip(a["key"].to_pylist(), a["image_emb"].to_pylist()))
    for key, emb in zip(b["key"].to_pylist(), b["image_emb"].to_pylist()):
        np.testing.assert_allclose(np.asarray(emb), np.asarray(ref[key]), atol=1e-4)
    assert all(b["has_image"].to_pylist())


def test_parquet_reads_with_pandas_and_duckdb(features):
    import duckdb
    import pandas as pd

    out, _ = features
    files = sorted(str(p) for p in (out / "parts").rglob("*.parquet"))
    df = pd.concat(pd.read_parquet(f) for f in files)
    assert len(df) == 12 and len(df["image_emb"].iloc[0]) == 5 * 1280
    con = duckdb.connect()
    rows = con.execute(
        "SELECT key, len(text_emb) AS d, list_dot_product(text_emb[1:384], text_emb[1:384]) AS n "
        f"FROM read_parquet({files!r}) ORDER BY key"
    ).fetchall()
    assert len(rows) == 12 and all(
        d == 384 + 1024 and abs(n - 1.0) < 1e-3 for _, d, n in rows
    )  # MiniLM is L2-normalised


def test_rerun_is_noop_and_interrupted_run_resumes(built, features, tmp_path):
    out, report = features
    assert run_features(features_cfg(built, out), quiet=True)["counts"] == report["counts"]
    # Simulate an interruption: copy the output, remove one committed part and the marker.
    import shutil

    half = tmp_path / "half"
    shutil.copytree(out, half)
    (half / "_SUCCESS").unlink()
    (half / "features.json").unlink()
    victim = sorted((half / "parts").rglob("*.parquet"))[0]
    lost = pq.read_table(victim).num_rows
    victim.unlink()
    rep = run_features(features_cfg(built, half), quiet=True)
    assert rep["counts"]["rows"] == lost and rep["counts"]["resumed"] == 12 - lost
    keys = read_all(half)["key"].to_pylist()
    assert len(keys) == len(set(keys)) == 12


def test_broken_sample_becomes_a_reject_row(tmp_path):
    from pipeline.io.tar import tar_bytes

    tar = tmp_path / "shards" / "000000.tar"
    tar.parent.mkdir()
    tar.write_bytes(
        tar_bytes(
            [
                ("a.jpg", media.jpeg()),
                ("a.txt", b"fine"),
                ("b.jpg", b"corrupt"),
                ("b.txt", b"bad image"),
                ("c.txt", b"text only"),
            ]
        )
    )
    out = tmp_path / "f"
    rep = run_features(features_cfg(str(tar), out), quiet=True)
    assert rep["counts"]["rows"] == 2 and rep["counts"]["rejected"] == 1
    assert rep["counts"]["rejects_by_reason"] == {"decode_error": 1}
    rej = pq.read_table(sorted((out / "rejects").rglob("*.parquet")))
    assert rej["key"].to_pylist() == ["b"] and rej["stage"].to_pylist() == ["preprocess_image"]
    table = read_all(out)
    c = table.filter(pa.compute.equal(table["key"], "c")).to_pylist()[0]
    assert c["has_image"] is False and c["image_emb"] is None and c["has_text"] is True


def test_features_that_hold_no_row_fail_with_the_reasons(tmp_path):
    from pipeline.errors import UserError
    from pipeline.io.tar import tar_bytes

    tar = tmp_path / "000000.tar"
    tar.write_bytes(tar_bytes([("a.jpg", b"corrupt"), ("b.jpg", b"also corrupt")]))
    out = tmp_path / "f"
    with pytest.raises(
        UserError, match=r"no sample got features: all 2 were rejected \(decode_error 2\)"
    ):
        run_features(features_cfg(str(tar), out), quiet=True)
    assert (out / "_SUCCESS").exists()  # committed: the rejects are the record
    with pytest.raises(UserError, match="no sample got features"):  # and so is a rerun
        run_features(features_cfg(str(tar), out), quiet=True)


def test_a_modality_that_the_samples_hold_with_no_encoder_stops_with_the_fix(built, tmp_path):
    from pipeline.features.config import FeaturesConfig

    out = tmp_path / "f"
    yaml_file = tmp_path / "f.yaml"
    yaml_file.write_text("features:\n  audio: null\n")  # what a user writes to turn it off
    cfg = load_features_config({"shards": str(built), "output": str(out)}, str(yaml_file))
    assert cfg.audio is None and cfg.model_fields_set >= {"audio"}
    with pytest.raises(UserError, match=r"holds audio, but features\.audio is off.*ignore"):
        run_features(cfg.model_copy(update={"actor_num_cpus": 0.5}), quiet=True)
    assert not (out / "_SUCCESS").exists()
    ignored = FeaturesConfig(shards=str(built), output=str(out), ignore=["audio"])
    assert ignored.audio is None  # ignore is the explicit way


def test_bad_features_config_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="unknown"):
        load_features_config({"shards": "x", "output": "y", "image": {"name": "alexnet"}})
    with pytest.raises(UserError, match="no bundled"):
        load_features_config({"shards": "x", "output": "y", "audio": {"name": "audio_cnn"}})
    with pytest.raises(UserError, match=r"no \.tar shards"):
        run_features(
            load_features_config({"shards": str(tmp_path), "output": str(tmp_path / "o")}),
            quiet=True,
        )


def test_a_model_without_audio_reads_shards_with_audio(tmp_path):
    """What the model never saw is ignored on purpose when embed preprocesses for it."""
    from pipeline.features.stages import FeaturePreprocess
    from pipeline.fusion.artifact import RunArtifact
    from tests.onnx_runs import FEATURES, make_run

    feats = {**FEATURES, "audio": {"name": "mel_stats"}}
    run = make_run(tmp_path / "run", features={**feats, "audio": None})
    cfg = RunArtifact.open(str(run)).features_config(shards="-", output="-")
    assert cfg.audio is None and cfg.ignore == ["audio"]
    batch = {"key": np.array(["a"]), "shard": np.array(["s"]), "audio": np.array([b"RIFF"], object)}
    FeaturePreprocess(cfg)._check_present(batch)  # no error: nothing unencoded was held
    strict = FeaturePreprocess(load_features_config({"shards": "-", "output": "-"}))
    strict.cfg = strict.cfg.model_copy(update={"audio": None})
    with pytest.raises(UserError, match="holds audio"):
        strict._check_present(batch)


def test_a_users_own_models_embed_every_modality_on_ray(built, tmp_path):
    """CLIP's image tower (transformers), open_clip's text tower and wav2vec2, through the job:
    the widths are the models' own and the values equal a direct call on the same samples."""
    import torch
    import webdataset as wds

    from pipeline.features.config import EncoderConfig
    from pipeline.models.encoders import load_encoder
    from pipeline.models.processors import ModelAudioPreprocess
    from tests import tiny_models

    clip = tiny_models.make_clip(tmp_path / "clip")
    oc = tiny_models.make_open_clip(tmp_path / "oc")
    w2v = tiny_models.make_wav2vec2(tmp_path / "w2v")
    out = tmp_path / "f"
    encoders = {
        "image": {"name": "hf", "weights": str(clip)},
        "text": {"name": "open_clip", "weights": str(oc)},
        "audio": {"name": "hf", "weights": str(w2v)},
    }
    report = run_features(features_cfg(built, out, **encoders), quiet=True)
    assert report["counts"] == {"rows": 12, "rejected": 0, "resumed": 0, "rejects_by_reason": {}}
    table = read_all(out)
    assert table.schema.field("image_emb").type == pa.list_(pa.float32(), 24)
    assert table.schema.field("text_emb").type == pa.list_(pa.float32(), 16)
    assert table.schema.field("audio_emb").type == pa.list_(pa.float32(), 32)
    assert report["encoders"]["image"]["encoder"] == "image:hf:CLIPModel"
    voiced = next(
        s
        for s in wds.WebDataset(
            sorted(str(p) for p in (built / "shards").glob("*.tar")), shardshuffle=False
        )
        if "flac" in s or "wav" in s
    )
    row = table.filter(pa.compute.equal(table["key"], voiced["__key__"])).to_pylist()[0]
    assert row["has_audio"] and row["has_image"] and row["has_text"]
    enc = load_encoder("audio", EncoderConfig(name="hf", weights=str(w2v)))
    pre = ModelAudioPreprocess(str(w2v), 1.0).run(
        {"audio": [voiced.get("flac", voiced.get("wav"))]}
    )
    with torch.inference_mode():
        ref = enc.model(*(torch.from_numpy(pre[c]) for c in enc.inputs)).numpy()[0]
    np.testing.assert_allclose(row["audio_emb"], ref, atol=1e-4)
