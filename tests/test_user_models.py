"""The user's own encoders (transformers, open_clip) equal direct calls of their libraries, and
load from a folder, an fsspec URL or (offline: refused in one line) the hub, safely."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.errors import UserError
from pipeline.features.config import EncoderConfig, load_features_config
from pipeline.models.encoders import load_encoder
from pipeline.models.processors import ModelAudioPreprocess, ModelImagePreprocess, ModelTokenize
from tests import tiny_models

TEXTS = ["a red circle", "two dogs on the grass near a big tree", "一只猫"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    makers = {
        "clip": tiny_models.make_clip,
        "siglip": tiny_models.make_siglip,
        "bert": tiny_models.make_bert,
        "vit": tiny_models.make_vit,
        "wav2vec2": tiny_models.make_wav2vec2,
        "hubert": lambda f: tiny_models.make_wav2vec2(f, hubert=True),
        "whisper": tiny_models.make_whisper,
        "clap": tiny_models.make_clap,
        "open_clip": tiny_models.make_open_clip,
    }
    return {name: make(root / name) for name, make in makers.items()}


def _images() -> tuple[list[bytes], list[Image.Image]]:
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee()]
    pngs, pils = [], []
    for i, arr in enumerate(photos):
        im = Image.fromarray(arr).resize((64 + 16 * i, 48))
        buf = io.BytesIO()
        im.save(buf, "PNG")  # lossless, so the reference sees the very same pixels
        pngs.append(buf.getvalue())
        pils.append(im)
    return pngs, pils


def _clips() -> tuple[list[bytes], list[np.ndarray]]:
    import soundfile as sf

    rng = np.random.default_rng(3)
    waves = [
        (0.3 * np.sin(np.arange(n) * f) + 0.05 * rng.standard_normal(n)).astype(np.float32)
        for n, f in ((6000, 0.05), (9000, 0.11), (12000, 0.02))
    ]
    encoded = []
    for w in waves:
        buf = io.BytesIO()
        sf.write(buf, w, 16000, format="WAV", subtype="FLOAT")  # float: bit-exact round trip
        encoded.append(buf.getvalue())
    return encoded, waves


def _ours(modality: str, lib: str, folder: Path | str, batch: dict) -> np.ndarray:
    enc = load_encoder(modality, EncoderConfig(name=lib, weights=str(folder)))
    with torch.inference_mode():
        return enc.model(*(torch.from_numpy(np.asarray(batch[c])) for c in enc.inputs)).numpy()


@pytest.mark.parametrize("name", ["clip", "siglip", "vit"])
def test_hf_image_towers_equal_the_library(models, name):
    import transformers

    folder = models[name]
    pngs, pils = _images()
    batch = ModelImagePreprocess("hf", str(folder)).run({"image": [*pngs, None]})
    ours = _ours("image", "hf", folder, batch)
    proc = transformers.AutoImageProcessor.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        pixels = proc(images=pils, return_tensors="pt")["pixel_values"]
        if name == "vit":
            ref = model(pixel_values=pixels).pooler_output
        else:  # the paired models' shared space: the projected image embedding
            ref = model.get_image_features(pixel_values=pixels).pooler_output
    np.testing.assert_allclose(ours[:3], ref.numpy(), atol=1e-5)
    assert batch["image_mask"].tolist() == [True, True, True, False]


@pytest.mark.parametrize("name", ["clip", "siglip", "bert", "clap"])
def test_hf_text_towers_equal_the_library(models, name):
    import transformers

    folder = models[name]
    batch = ModelTokenize("hf", str(folder), 64).run({"text": [*TEXTS, None]})
    ours = _ours("text", "hf", folder, batch)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        if name == "siglip":  # as SigLIP's model card calls it: max_length padding, no mask
            ids = tok(TEXTS, padding="max_length", max_length=64, return_tensors="pt").input_ids
            ref = model.get_text_features(input_ids=ids).pooler_output
        elif name == "bert":  # mean pooling over the real tokens, padded to the longest only
            enc = tok(TEXTS, padding=True, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            m = enc.attention_mask.unsqueeze(-1).float()
            ref = (hidden * m).sum(1) / m.sum(1)
        else:
            enc = tok(TEXTS, padding=True, return_tensors="pt")
            ref = model.get_text_features(
                input_ids=enc.input_ids, attention_mask=enc.attention_mask
            ).pooler_output
    np.testing.assert_allclose(ours[:3], ref.numpy(), atol=1e-5)
    assert batch["text_mask"].tolist() == [True, True, True, False]


@pytest.mark.parametrize("name", ["wav2vec2", "hubert", "whisper", "clap"])
def test_hf_audio_towers_equal_the_library_clip_by_clip(models, name):
    import transformers

    folder = models[name]
    encoded, waves = _clips()
    batch = ModelAudioPreprocess(str(folder), 2.0).run({"audio": [*encoded, None]})
    ours = _ours("audio", "hf", folder, batch)
    fe = transformers.AutoFeatureExtractor.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    refs = []
    with torch.inference_mode():
        for w in waves:  # one clip at a time, unpadded: padding in a batch must not show
            if name == "clap":
                x = fe(w, sampling_rate=16000, return_tensors="pt")
                refs.append(model.get_audio_features(**x).pooler_output[0])
            elif name == "whisper":
                x = fe(w, sampling_rate=16000, return_tensors="pt", return_attention_mask=True)
                hidden = model.get_encoder()(x.input_features).last_hidden_state[0]
                refs.append(hidden[: int(x.attention_mask[0, ::2].sum())].mean(0))
            else:
                x = fe(w, sampling_rate=16000, return_tensors="pt")
                refs.append(model(x.input_values).last_hidden_state[0].mean(0))
    np.testing.assert_allclose(ours[:3], torch.stack(refs).numpy(), atol=2e-5)
    assert batch["audio_mask"].tolist() == [True, True, True, False]


def test_open_clip_towers_equal_the_library(models):
    import open_clip

    folder = models["open_clip"]
    name = f"local-dir:{folder}"
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    tokenizer = open_clip.get_tokenizer(name)
    pngs, pils = _images()
    img = ModelImagePreprocess("open_clip", str(folder)).run({"image": pngs})
    txt = ModelTokenize("open_clip", str(folder), 64).run({"text": TEXTS})
    with torch.inference_mode():
        ref_img = model.eval().encode_image(torch.stack([preprocess(im) for im in pils]))
        ref_txt = model.encode_text(tokenizer(TEXTS))
    np.testing.assert_allclose(_ours("image", "open_clip", folder, img), ref_img, atol=1e-5)
    np.testing.assert_allclose(_ours("text", "open_clip", folder, txt), ref_txt, atol=1e-5)


def test_a_model_folder_loads_from_an_fsspec_url_with_the_same_outputs(models):
    import fsspec

    fs = fsspec.filesystem("memory")
    for f in models["clip"].iterdir():
        fs.pipe(f"/zoo/clip/{f.name}", f.read_bytes())
    batch = ModelTokenize("hf", "memory://zoo/clip", 64).run({"text": TEXTS})
    local = load_encoder("text", EncoderConfig(name="hf", weights=str(models["clip"])))
    remote = load_encoder("text", EncoderConfig(name="hf", weights="memory://zoo/clip"))
    assert remote.weights_id == local.weights_id and remote.dim == local.dim == 24
    np.testing.assert_allclose(
        _ours("text", "hf", "memory://zoo/clip", batch),
        _ours("text", "hf", models["clip"], batch),
        atol=0,
    )


def test_a_hub_id_offline_or_a_missing_folder_is_one_line(monkeypatch, tmp_path):
    from pipeline.models.sources import local_folder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(UserError, match=r"HF_HUB_OFFLINE.*save_pretrained") as e:
        local_folder("nobody-org/no-such-model-xyz")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="model folder not found"):
        local_folder(str(tmp_path / "missing"))


class _Payload:
    def __reduce__(self):
        return (os.mkdir, (os.environ["MMPIPE_TEST_MARKER"],))


def test_a_pickle_bearing_checkpoint_is_refused_and_never_runs(models, tmp_path, monkeypatch):
    import shutil

    folder = tmp_path / "evil"
    shutil.copytree(models["bert"], folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    monkeypatch.setenv("MMPIPE_TEST_MARKER", str(marker))
    torch.save({"bert.embeddings.word_embeddings.weight": _Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(UserError, match="cannot load a transformers model"):
        load_encoder("text", EncoderConfig(name="hf", weights=str(folder)))
    assert not marker.exists()


def test_user_model_config_mistakes_are_one_clear_line(tmp_path):
    base = {"shards": str(tmp_path), "output": str(tmp_path / "o")}
    for bad, match in (
        ({"image": {"name": "hf"}}, "image.weights must name the hf model"),
        ({"audio": {"name": "open_clip", "weights": "x"}}, "audio.name = 'open_clip' is unknown"),
    ):
        with pytest.raises(UserError, match=match) as e:
            load_features_config({**base, **bad})
        assert "\n" not in str(e.value)


def test_local_weights_travel_absolute_and_names_stay_as_given(models, tmp_path, monkeypatch):
    from pipeline.features.config import FeaturesConfig

    monkeypatch.chdir(models["clip"].parent)
    cfg = FeaturesConfig(
        shards="s",
        output="o",
        image={"name": "hf", "weights": "clip"},  # relative: workers run in another directory
        text={"name": "hf", "weights": "org/hub-model"},  # a hub id: no such local folder
    ).with_absolute_weights()
    assert cfg.image is not None and cfg.image.weights == str(models["clip"])
    assert cfg.text is not None and cfg.text.weights == "org/hub-model"
    assert cfg.audio is not None and cfg.audio.weights == "default"


def test_a_model_without_the_asked_for_tower_names_the_modality(models):
    with pytest.raises(UserError, match=r"BertModel\) has no image tower.*features\.image"):
        load_encoder("image", EncoderConfig(name="hf", weights=str(models["bert"])))
    with pytest.raises(UserError, match="open_clip has no audio tower"):
        load_encoder("audio", EncoderConfig(name="open_clip", weights=str(models["open_clip"])))
