"""Preprocessing stages, each checked against a reference computed a second way."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.preprocess.audio import AudioLogMel, LogMelConfig
from pipeline.preprocess.image import IMAGE_PRESETS as PRESETS
from pipeline.preprocess.image import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocess
from pipeline.preprocess.text import TextTokenize
from tests import media


def solid_jpeg(w: int, h: int, rgb=(200, 100, 50), q: int = 100) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), rgb).save(buf, "JPEG", quality=q, subsampling=0)
    return buf.getvalue()


# -- image -------------------------------------------------------------------------------


def test_image_values_shapes_and_masks():
    st = ImagePreprocess("imagenet")
    out = st({"image": [solid_jpeg(320, 240), None, b"not an image"]})
    x = out["pixel_values"]
    assert x.shape == (3, 3, 224, 224) and x.dtype == np.float32
    expected = (np.array([200, 100, 50]) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(x[0].mean(axis=(1, 2)), expected, atol=0.03)
    assert out["image_mask"].tolist() == [True, False, False]
    assert not x[1].any() and not x[2].any()
    assert out["image_error"][2].startswith("decode_error") and out["image_error"][1] is None


def test_resize_then_center_crop_matches_a_manual_reference():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    got = ImagePreprocess("imagenet")({"image": [buf.getvalue()]})["pixel_values"][0]
    # Reference: torch resize of the short side to 256 with antialias, crop 224, normalise.
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(arr).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=(256, 341), mode="bilinear", antialias=True, align_corners=False)
    top, left = (256 - 224) // 2, (341 - 224) // 2
    t = t[0, :, top : top + 224, left : left + 224].round().clamp(0, 255) / 255
    ref = (t - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[
        :, None, None
    ]
    assert np.abs(got - ref.numpy()).mean() < 0.02


def test_uint8_output_normalised_later_equals_the_float_path():
    import torch

    from pipeline.preprocess.image import normalize_uint8

    rng = np.random.default_rng(3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (250, 330, 3), dtype=np.uint8)).save(buf, "PNG")
    imgs = [buf.getvalue(), None, solid_jpeg(400, 300)]
    for preset in ("imagenet", "efficientnet_lite"):
        f32 = ImagePreprocess(preset)({"image": imgs})
        u8 = ImagePreprocess(preset, dtype="uint8")({"image": imgs})
        assert u8["pixel_values"].dtype == np.uint8
        assert u8["image_mask"].tolist() == f32["image_mask"].tolist() == [True, False, True]
        late = normalize_uint8(torch.from_numpy(u8["pixel_values"]), preset).numpy()
        ok = f32["image_mask"]
        np.testing.assert_allclose(late[ok], f32["pixel_values"][ok], atol=1e-5)
    with pytest.raises(ValueError, match="dtype"):
        ImagePreprocess("imagenet", dtype="float16")


def test_exif_rotation_is_applied():
    data = media.jpeg(64, 32, exif_orientation=6)
    st = ImagePreprocess("imagenet")
    st.ensure_setup()
    from pipeline.preprocess.image import decode_pil

    assert decode_pil(data, 32).size == (32, 64)


def test_draft_decode_is_close_to_full_decode():
    rng = np.random.default_rng(1)
    base = np.kron(rng.integers(0, 256, (30, 40, 3)), np.ones((64, 64, 1))).astype(
        np.uint8
    )  # 1920x2560
    buf = io.BytesIO()
    Image.fromarray(base).save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    fast = ImagePreprocess("imagenet")({"image": [data]})["pixel_values"][0]
    im = Image.open(io.BytesIO(data)).convert("RGB")  # no draft
    full_st = ImagePreprocess("imagenet")
    full_st.ensure_setup()
    full = full_st.transform(im).numpy()
    assert np.abs(fast - full).mean() < 0.05


def test_augment_and_presets():
    out = ImagePreprocess("efficientnet_lite", augment=True)({"image": [solid_jpeg(300, 200)]})
    assert out["pixel_values"].shape == (1, 3, 224, 224)
    assert set(PRESETS) >= {"imagenet", "efficientnet_lite", "clip"}
    with pytest.raises(ValueError, match="unknown image preset"):
        ImagePreprocess("nope")


def test_cuda_request_falls_back_to_cpu_without_a_gpu():
    import torch

    st = ImagePreprocess("imagenet", device="cuda")
    out = st({"image": [solid_jpeg(64, 64)]})
    assert out["image_mask"].tolist() == [True]
    if not torch.cuda.is_available():
        assert st.device == "cpu"


# -- text --------------------------------------------------------------------------------


def test_minilm_tokenizer_pads_truncates_and_masks():
    st = TextTokenize("minilm", max_length=8)
    out = st({"text": ["a red circle", "word " * 50, None]})
    ids, att = out["input_ids"], out["attention_mask"]
    assert ids.shape == att.shape == (3, 8)
    assert ids[0, :5].tolist() == [101, 1037, 2417, 4418, 102] and ids[0, 5:].tolist() == [0, 0, 0]
    assert att[0].tolist() == [1] * 5 + [0] * 3
    assert att[1].sum() == 8 and ids[1, -1] == 102  # truncated, still ends with [SEP]
    assert out["text_mask"].tolist() == [True, True, False] and att[2].sum() == 0


def test_tokenizer_from_a_json_path(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, "red": 2, "circle": 3}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tk.save(str(path))
    out = TextTokenize(str(path), max_length=4, padding="longest")(
        {"text": ["red circle", "red blue"]}
    )
    assert out["input_ids"].tolist() == [[2, 3], [2, 1]]


# -- audio -------------------------------------------------------------------------------


def reference_log_mel(x: np.ndarray, c: LogMelConfig) -> np.ndarray:
    """numpy STFT (reflect pad, periodic Hann, rfft) and filters built point by point."""
    pad = c.n_fft // 2
    xp = np.pad(x.astype(np.float64), pad, mode="reflect")
    n_frames = 1 + (len(xp) - c.n_fft) // c.hop_length
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(c.n_fft) / c.n_fft)
    frames = np.stack(
        [xp[i * c.hop_length : i * c.hop_length + c.n_fft] * win for i in range(n_frames)]
    )
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # [frames, bins]
    f_max = c.f_max or c.sample_rate / 2

    def mel(f):
        return 2595 * np.log10(1 + f / 700)

    edges = [
        700 * (10 ** (m / 2595) - 1) for m in np.linspace(mel(c.f_min), mel(f_max), c.n_mels + 2)
    ]
    freqs = np.arange(c.n_fft // 2 + 1) * c.sample_rate / c.n_fft
    fb = np.zeros((c.n_mels, len(freqs)))
    for m in range(c.n_mels):
        lo, ce, hi = edges[m], edges[m + 1], edges[m + 2]
        for k, f in enumerate(freqs):
            if lo < f <= ce:
                fb[m, k] = (f - lo) / (ce - lo)
            elif ce < f < hi:
                fb[m, k] = (hi - f) / (hi - ce)
    return np.log(fb @ power.T + c.eps)


def test_log_mel_matches_numpy_reference():
    import soundfile as sf

    c = LogMelConfig(num_frames=101)
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    x = (0.4 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.normal(size=t.size)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="WAV", subtype="FLOAT")
    out = AudioLogMel(c)({"audio": [buf.getvalue()]})
    got = out["log_mel"][0]
    ref = reference_log_mel(x[: (c.num_frames - 1) * c.hop_length], c)
    assert got.shape == ref.shape == (64, 101)
    loud = ref > np.log(1e-3)  # compare where there is energy; tiny bins are dominated by eps
    np.testing.assert_allclose(got[loud], ref[loud], atol=2e-3, rtol=1e-3)


def test_audio_padding_mask_resampling_and_missing():
    c = LogMelConfig(num_frames=100)
    short = media.wav(0.25, 44100, channels=2)  # 0.25 s stereo at 44.1 kHz
    out = AudioLogMel(c)({"audio": [short, None, b"junk"]})
    assert out["log_mel"].shape == (3, 64, 100)
    assert out["audio_mask"].tolist() == [True, False, False]
    valid = int(out["audio_frames_mask"][0].sum())
    assert valid == 4000 // 160 + 1  # 0.25 s at 16 kHz, 10 ms hop
    assert np.all(out["log_mel"][0][:, valid:] == np.float32(np.log(c.eps)))
    assert out["audio_error"][2].startswith("decode_error")
