"""Per-modality validation and normalisation, and key/hash derivation, without Ray."""

import io
import time

import pytest
from PIL import Image

from pipeline.config import BuildConfig
from pipeline.errors import Reason, SampleError
from pipeline.validate.audio import AudioOptions, validate_audio
from pipeline.validate.deadline import deadline
from pipeline.validate.image import ImageOptions, target_size, validate_image
from pipeline.validate.keys import content_hash, sanitize_key
from pipeline.validate.row import ValidateStage
from pipeline.validate.text import validate_text
from tests import media


def _reason(fn, *args, **kwargs):
    with pytest.raises(SampleError) as e:
        fn(*args, **kwargs)
    return e.value.reason


# -- images ------------------------------------------------------------------------------


def test_passthrough_keeps_bytes_untouched():
    data = media.jpeg(64, 48)
    res = validate_image(data, ImageOptions())
    assert res.data == data and res.ext == "jpg" and (res.width, res.height) == (64, 48)


def test_exif_rotation_swaps_reported_and_normalised_size():
    data = media.jpeg(64, 32, exif_orientation=6)
    assert (
        validate_image(data, ImageOptions()).width,
        validate_image(data, ImageOptions()).height,
    ) == (32, 64)
    res = validate_image(data, ImageOptions(image_format="png"))
    out = Image.open(io.BytesIO(res.data))
    assert out.size == (32, 64) and out.mode == "RGB"


@pytest.mark.parametrize("mode", ["CMYK", "L", "P", "I;16", "LA", "RGBA"])
def test_colour_modes_normalise_to_rgb(mode):
    data = media.jpeg(40, 30, mode=mode) if mode == "CMYK" else media.png(40, 30, mode=mode)
    res = validate_image(data, ImageOptions(image_format="jpg"))
    out = Image.open(io.BytesIO(res.data))
    assert out.mode == "RGB" and out.size == (40, 30)


def test_sixteen_bit_scales_instead_of_clipping():
    res = validate_image(media.png(40, 30, mode="I;16"), ImageOptions(image_format="png"))
    px = Image.open(io.BytesIO(res.data)).getextrema()
    assert px[0][1] > 200  # brightest 16-bit value maps near white, not to a clipped 255 everywhere
    assert px[0][0] < 10


@pytest.mark.parametrize(
    "mode,size,expected",
    [
        ("keep_ratio", 24, (32, 24)),
        ("keep_ratio_largest", 32, (32, 24)),
        ("center_crop", 24, (24, 24)),
        ("border", 32, (32, 32)),
        ("no", 24, (64, 48)),
    ],
)
def test_resize_modes(mode, size, expected):
    res = validate_image(
        media.jpeg(64, 48), ImageOptions(resize=size, resize_mode=mode, image_format="jpg")
    )
    assert Image.open(io.BytesIO(res.data)).size == expected == (res.width, res.height)


def test_no_upscale_by_default_and_upscale_when_asked():
    assert target_size(20, 10, ImageOptions(resize=40)) == (20, 10)
    assert target_size(20, 10, ImageOptions(resize=40, upscale=True)) == (80, 40)


@pytest.mark.parametrize("fmt,ext", [("webp", "webp"), ("png", "png")])
def test_reencode_formats(fmt, ext):
    res = validate_image(media.jpeg(), ImageOptions(image_format=fmt, quality=80))
    assert res.ext == ext and Image.open(io.BytesIO(res.data)).format == fmt.upper()


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_other_formats_become_png(fmt):
    res = validate_image(media.image_bytes(fmt), ImageOptions())
    assert res.ext == "png" and Image.open(io.BytesIO(res.data)).format == "PNG"


def test_bad_images():
    assert _reason(validate_image, b"not an image at all", ImageOptions()) == Reason.DECODE_ERROR
    assert _reason(validate_image, b"", ImageOptions()) == Reason.DECODE_ERROR
    assert _reason(validate_image, media.jpeg(64, 48)[:300], ImageOptions()) == Reason.DECODE_ERROR
    assert _reason(validate_image, media.png(4, 4), ImageOptions()) == Reason.TOO_SMALL
    assert _reason(validate_image, media.png(40, 30), ImageOptions(max_size=32)) == Reason.TOO_LARGE


def test_bomb_guard_refuses_before_decoding():
    bomb = media.png_header_only(60000, 60000)
    t0 = time.perf_counter()
    with pytest.raises(SampleError) as e:
        validate_image(bomb, ImageOptions(max_size=100000))
    assert e.value.reason == Reason.TOO_LARGE and "bomb" in e.value.message
    assert time.perf_counter() - t0 < 1.0


# -- audio -------------------------------------------------------------------------------


def test_wav_and_flac_pass_through_when_kept():
    data = media.wav(0.5, 16000)
    res = validate_audio(data, AudioOptions(format="keep"))
    assert res.data == data and res.ext == "wav" and res.sample_rate == 16000
    assert res.duration == pytest.approx(0.5)
    flac = media.wav(0.25, 22050, fmt="FLAC")
    assert validate_audio(flac, AudioOptions()).data == flac


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24"])
def test_default_turns_wav_into_lossless_flac(subtype):
    """One audio type per build by default (HF datasets needs it), without losing a bit."""
    import soundfile as sf

    data = media.wav(0.3, 16000, subtype=subtype)
    res = validate_audio(data, AudioOptions())
    assert res.ext == "flac" and res.data[:4] == b"fLaC"
    a, _ = sf.read(io.BytesIO(data), dtype="int32")
    b, _ = sf.read(io.BytesIO(res.data), dtype="int32")
    assert (a == b).all() and sf.info(io.BytesIO(res.data)).subtype == subtype


def test_unreadable_audio_message_is_deterministic():
    with pytest.raises(SampleError) as e:
        validate_audio(b"not audio at all" * 8, AudioOptions())
    assert "0x" not in str(e.value) and "BytesIO" not in str(e.value)


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_24", "FLOAT", "ULAW"])
def test_odd_encodings_decode(subtype):
    res = validate_audio(media.wav(0.2, 8000, subtype=subtype), AudioOptions())
    assert res.duration == pytest.approx(0.2, abs=1e-3)


def test_transcode_to_mono_flac_at_rate():
    import soundfile as sf

    res = validate_audio(media.wav(0.5, 44100, channels=2), AudioOptions(rate=16000))
    x, sr = sf.read(io.BytesIO(res.data))
    assert (
        res.ext == "flac" and sr == 16000 and x.ndim == 1 and len(x) == 8000 and res.channels == 1
    )


def test_ogg_is_stored_as_flac():
    res = validate_audio(media.wav(0.3, 16000, fmt="OGG", subtype="VORBIS"), AudioOptions())
    assert res.ext == "flac" and res.duration == pytest.approx(0.3, abs=0.01)


def test_bad_audio():
    data = media.wav(1.0)
    assert _reason(validate_audio, data[: len(data) // 2], AudioOptions()) == Reason.DECODE_ERROR
    assert _reason(validate_audio, b"RIFF\x00\x00garbage", AudioOptions()) == Reason.DECODE_ERROR
    assert _reason(validate_audio, data, AudioOptions(max_seconds=0.5)) == Reason.TOO_LONG
    assert _reason(validate_audio, data, AudioOptions(min_seconds=2)) == Reason.TOO_SMALL


# -- text --------------------------------------------------------------------------------


def test_text_rules():
    assert validate_text("Cafe\u0301 ".encode(), max_chars=10) == "Café"
    assert validate_text(b"   ", max_chars=10) is None
    assert _reason(validate_text, b"\xff\xfe bad", max_chars=10) == Reason.DECODE_ERROR
    assert _reason(validate_text, b"nul\x00inside", max_chars=100) == Reason.DECODE_ERROR
    assert _reason(validate_text, b"x" * 11, max_chars=10) == Reason.TOO_LONG
    assert _reason(validate_text, b"x" * 10_000_000, max_chars=10) == Reason.TOO_LONG
    assert validate_text("\u202eevil bidi".encode(), max_chars=100) == "\u202eevil bidi"


# -- keys --------------------------------------------------------------------------------


def test_sanitize_keys_cannot_escape_or_collide():
    hostile = [
        "../../etc/passwd",
        "/abs/key",
        "a/b",
        "a_b",
        "a.b",
        "..",
        "",
        "dir\\x",
        "spa ce",
        "ключ",
        "a\u202eb",
    ]
    out = [sanitize_key(k) for k in hostile]
    assert len(set(out)) == len(out)
    for k in out:
        assert k and "/" not in k and "." not in k and "\\" not in k and "\u202e" not in k
    assert sanitize_key("a_b") == "a_b" and sanitize_key("ключ") == "ключ"
    assert len(sanitize_key("x" * 500)) <= 96


def test_content_hash_covers_payloads_not_metadata():
    a = content_hash(b"img", "text", None, [])
    assert a == content_hash(b"img", "text", None, [])
    assert a != content_hash(b"img", "text2", None, [])
    assert a != content_hash(b"img", None, b"text", [])


# -- the per-row stage -------------------------------------------------------------------


def _row(*parts, err=None):
    return {"members": [list(parts)], "error_reason": [err], "error_message": [err]}


def test_validate_stage_reject_or_drop_failing_modality():
    bad_img = {"name": "image", "ref": None, "data": b"junk"}
    txt = {"name": "text", "ref": None, "data": b"a caption"}
    strict = ValidateStage(BuildConfig(input="i", output="o"))
    out = strict(_row(bad_img, txt))
    assert out["reason"] == ["decode_error"] and out["modality"] == ["image"]
    lenient = ValidateStage(BuildConfig(input="i", output="o", on_modality_error="drop"))
    out = lenient(_row(dict(bad_img), dict(txt)))
    assert out["reason"] == [None] and out["text"] == ["a caption"]
    assert "image" in out["meta"][0]["_dropped"]
    assert strict(_row())["reason"] == ["no_modality"]


def test_deadline_interrupts_a_slow_sample():
    with pytest.raises(SampleError) as e, deadline(0.05):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 5:
            pass
    assert e.value.reason == Reason.TIMEOUT


def test_per_sample_timeout_becomes_a_reject():
    big = media.image_bytes("PNG", 3000, 3000)
    stage = ValidateStage(
        BuildConfig(input="i", output="o", sample_timeout_s=0.001, image_format="png")
    )
    out = stage(_row({"name": "image", "ref": None, "data": big}))
    assert out["reason"] == ["timeout"]
