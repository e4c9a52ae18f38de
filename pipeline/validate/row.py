"""ValidateStage: decode and validate every part of a row into a normalised sample or a reject."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, ClassVar

from pipeline.errors import Reason, SampleError, rejecting
from pipeline.stage import Batch, Stage
from pipeline.validate.audio import AudioOptions, validate_audio
from pipeline.validate.deadline import deadline
from pipeline.validate.image import ImageOptions, validate_image
from pipeline.validate.text import validate_text

_EXT_SAFE = re.compile(r"[^a-z0-9._-]")
RESULT_COLUMNS = (
    "reason",
    "modality",
    "message",
    "image",
    "image_ext",
    "image_width",
    "image_height",
    "image_phash",
    "audio",
    "audio_ext",
    "audio_duration",
    "audio_sample_rate",
    "audio_channels",
    "text",
    "meta",
    "extras",
)


# Members whose decoders can run long on hostile bytes, and so run under the time limit.
_DECODED = ("image", "audio")


class ValidateStage(Stage):
    """Turn each row's fetched members into validated, normalised modalities.

    A row becomes a sample when at least one modality is valid. With
    ``on_modality_error='reject'`` (the default) any failing modality rejects the row with
    its reason; with ``'drop'`` the modality is left out and its failure is recorded in the
    sample's JSON under ``_dropped``, so nothing disappears unnoticed.
    """

    name = "validate"
    reads: ClassVar[tuple[str, ...]] = ("members", "error_reason", "error_message")
    adds: ClassVar[tuple[str, ...]] = RESULT_COLUMNS

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.image_opts = ImageOptions.from_config(cfg)
        self.audio_opts = AudioOptions.from_config(cfg)
        self.max_text_chars = cfg.max_text_chars
        self.timeout = cfg.sample_timeout_s
        self.drop = cfg.on_modality_error == "drop"

    def setup(self) -> None:
        from PIL import Image

        # We run our own guard on the header size; PIL's global one would only warn.
        Image.MAX_IMAGE_PIXELS = self.image_opts.max_pixels

    def __call__(self, batch: Batch) -> Batch:
        self.ensure_setup()
        out: dict[str, list[Any]] = {c: [] for c in RESULT_COLUMNS}
        for members, err, msg in zip(
            batch["members"], batch["error_reason"], batch["error_message"]
        ):
            res = self._row(members or [], err, msg)
            for c in RESULT_COLUMNS:
                out[c].append(res.get(c))
        batch.update(out)
        return batch

    def _row(
        self, members: list[dict[str, Any]], err: str | None, msg: str | None
    ) -> dict[str, Any]:
        try:
            if err:
                raise SampleError(Reason(err), msg or err, "row")
            if not any(p.get("name") in _DECODED for p in members):
                # Text and JSON are bounded by their size caps; the timer costs ~8 us a
                # row (two signal calls, two itimers), a tenth of a text row's CPU.
                return self._validate(members)
            with deadline(self.timeout):
                return self._validate(members)
        except SampleError as e:
            rejecting(e)
            return {"reason": e.reason.value, "modality": e.modality, "message": e.message}

    def _validate(self, members: list[dict[str, Any]]) -> dict[str, Any]:
        res: dict[str, Any] = {"extras": []}
        dropped: dict[str, str] = {}
        meta: dict[str, Any] = {}
        for part in members:
            name = part["name"]
            try:
                if part.get("error"):
                    raise SampleError(Reason(part["error"]), part.get("message") or "", name)
                data = part.get("data")
                if data is None:
                    continue
                if name == "image" and "image" not in res:
                    res.update(_columns("image", validate_image(data, self.image_opts)))
                elif name == "audio" and "audio" not in res:
                    res.update(_columns("audio", validate_audio(data, self.audio_opts)))
                elif name == "text" and "text" not in res:
                    text = validate_text(data, max_chars=self.max_text_chars)
                    if text is not None:
                        res["text"] = text
                elif name == "json":
                    meta.update(_parse_meta(data))
                else:
                    ext = name.split(":", 1)[1] if ":" in name else name
                    res["extras"].append((_EXT_SAFE.sub("_", ext.lower()) or "bin", data))
            except SampleError as e:
                if not self.drop or name == "json":
                    raise
                dropped[name] = f"{e.reason.value}: {e.message}"
        if not any(m in res for m in ("image", "audio", "text")):
            if dropped:
                first = next(iter(dropped))
                reason, _, message = dropped[first].partition(": ")
                raise SampleError(Reason(reason), message, first)
            raise SampleError(Reason.NO_MODALITY, "the row holds no image, audio or text", "row")
        if dropped:
            meta["_dropped"] = dropped
        res["meta"] = meta
        return res


def _parse_meta(data: bytes) -> dict[str, Any]:
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise SampleError(
            Reason.DECODE_ERROR, f"metadata is not valid JSON: {e}"[:300], "json"
        ) from None
    if not isinstance(meta, dict):
        raise SampleError(Reason.DECODE_ERROR, "metadata JSON must be an object", "json")
    return meta


def _columns(modality: str, result: Any) -> dict[str, Any]:
    """A validated modality as result columns: ``image`` for its bytes, ``image_ext`` etc."""
    return {
        modality if name == "data" else f"{modality}_{name}": value
        for name, value in dataclasses.asdict(result).items()
    }
