"""mmpipe zero-shot: a paired model's towers (CLIP here) embed and search with no training, and
the store holds exactly the library's own normalised embeddings."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.build.job import run_build
from pipeline.config import BuildConfig
from pipeline.embed.config import load_embed_config
from pipeline.embed.job import run_embed
from pipeline.embed.search import search
from pipeline.embed.store import data_files
from pipeline.errors import UserError
from pipeline.io.parquet import fsl_to_numpy
from pipeline.sample_corpus import write_corpus
from pipeline.zeroshot import write_zero_shot_run
from tests import tiny_models

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("zs")
    write_corpus(str(root / "c"), n=10, seed=7, broken=False)
    cfg = BuildConfig(input=str(root / "c" / "manifest.jsonl"), output=str(root / "b"))
    run_build(cfg.model_copy(update={"shard_samples": 5}), quiet=True)
    tiny_models.make_clip(root / "clip")
    return root


def test_a_paired_model_embeds_and_searches_with_no_training(world, tmp_path):
    import transformers
    import webdataset as wds
    from PIL import Image

    run = tmp_path / "run"
    info = write_zero_shot_run(str(world / "clip"), str(run), quiet=True)
    assert info["fusion_type"] == "zero_shot" and info["dims"] == {"image": 24, "text": 24}
    cfg = load_embed_config(
        {
            "shards": str(world / "b"),
            "model": str(run),
            "output": str(tmp_path / "emb"),
            "batch_size": 4,
            "actor_num_cpus": 0.5,
        }
    )
    report = run_embed(cfg, incremental=False, kind="embed", quiet=True)
    assert report["rows"] == report["embedded"] == 10
    table = pa.concat_tables(pq.read_table(f) for f in data_files(str(tmp_path / "emb")))
    got, _ = fsl_to_numpy(table["image_emb"], 24)
    keys = table["key"].to_pylist()
    # The library's own call on the same images, normalised: that is the shared space.
    model = transformers.CLIPModel.from_pretrained(world / "clip").eval()
    proc = transformers.AutoImageProcessor.from_pretrained(world / "clip")
    tok = transformers.AutoTokenizer.from_pretrained(world / "clip")
    shards = sorted(str(p) for p in (world / "b" / "shards").glob("*.tar"))
    images = {
        s["__key__"]: Image.open(io.BytesIO(s.get("jpg") or s["png"])).convert("RGB")
        for s in wds.WebDataset(shards, shardshuffle=False)
    }
    with torch.inference_mode():
        pixels = proc(images=[images[k] for k in keys], return_tensors="pt")["pixel_values"]
        ref = torch.nn.functional.normalize(
            model.get_image_features(pixel_values=pixels).pooler_output, dim=-1
        ).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4)
    # A text query, ranked against the images by the library's own cosine similarity.
    query = "a small blue star"
    with torch.inference_mode():
        enc = tok([query], padding=True, return_tensors="pt")
        q = torch.nn.functional.normalize(
            model.get_text_features(**enc).pooler_output, dim=-1
        ).numpy()[0]
    expected = [keys[i] for i in np.argsort(-(ref @ q))[:3]]
    hits = search(str(tmp_path / "emb"), text=query, column="image", k=3, exact=True)["hits"]
    assert [h["key"] for h in hits] == expected
    assert json.loads((run / "model.json").read_text())["classes"] == []


def test_a_model_without_two_towers_is_refused_in_one_line(tmp_path):
    bert = tiny_models.make_bert(tmp_path / "bert")
    with pytest.raises(UserError, match="not a paired model") as e:
        write_zero_shot_run(str(bert), str(tmp_path / "run"), quiet=True)
    assert "\n" not in str(e.value) and not (tmp_path / "run").exists()


def test_an_open_clip_query_is_the_librarys_own_normalised_embedding(tmp_path):
    import open_clip

    from pipeline.embed.search import encode_query
    from pipeline.fusion.artifact import RunArtifact

    folder = tiny_models.make_open_clip(tmp_path / "oc")
    info = write_zero_shot_run(str(folder), str(tmp_path / "run"), "open_clip", quiet=True)
    assert info["dims"] == {"image": 16, "text": 16}
    fused, embs = encode_query(RunArtifact.open(str(tmp_path / "run")), text="a red circle")
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    with torch.inference_mode():
        ref = model.eval().encode_text(
            open_clip.get_tokenizer(f"local-dir:{folder}")(["a red circle"])
        )
    ref = torch.nn.functional.normalize(ref, dim=-1).numpy()[0]
    np.testing.assert_allclose(embs["text"], ref, atol=1e-5)
    np.testing.assert_allclose(fused, ref, atol=1e-5)  # one modality present: the fusion is it
