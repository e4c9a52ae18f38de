"""End-to-end presets' data: shard samples to pixels, token ids and labels, one split at a time
(their modules are in pipeline/fusion/presets.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from pipeline.preprocess.image import ImagePreprocess
from pipeline.preprocess.text import TextTokenize
from pipeline.stage import Stage
from pipeline.train.data import SplitLabel, label_vocabulary

E2E_COLUMNS = ("key", "meta", "pixel_values", "input_ids", "has_image", "has_text", "label")


class E2EPreprocess(Stage):
    """Shard samples -> one split's rows with uint8 pixels, token ids, masks and labels."""

    name = "e2e_preprocess"
    reads: ClassVar[tuple[str, ...]] = ("key", "image", "text", "meta")
    adds: ClassVar[tuple[str, ...]] = E2E_COLUMNS
    passthrough: ClassVar[bool] = False
    batch_format: ClassVar[str] = "numpy"

    def __init__(
        self,
        split: str,
        fraction: float,
        classes: list[str],
        label_field: str | None,
        image_size: int,
        max_tokens: int,
    ) -> None:
        super().__init__()
        self.split_label = SplitLabel(
            split, fraction, classes, label_field
        )  # the same split and labels
        self.image_size, self.max_tokens = image_size, max_tokens

    def setup(self) -> None:
        from pipeline.preprocess.image import IMAGE_PRESETS, ImagePreset

        base = IMAGE_PRESETS["imagenet"]
        # A small square crop: the textbook models are trained from scratch on CPU.
        IMAGE_PRESETS[f"e2e{self.image_size}"] = ImagePreset(
            self.image_size, self.image_size, base.mean, base.std
        )
        self.image = ImagePreprocess(f"e2e{self.image_size}", dtype="uint8")
        self.text = TextTokenize("minilm", max_length=self.max_tokens)

    def __call__(self, batch: Any) -> Any:
        self.ensure_setup()
        keep = self.split_label.keep(list(batch["key"]))
        sub = {
            k: np.asarray(v, dtype=object)[keep]
            if k in ("image", "text", "meta")
            else np.asarray(v)[keep]
            for k, v in batch.items()
        }
        sub = self.text.run(self.image.run(sub))
        metas = [
            m if isinstance(m, str) else None for m in sub.get("meta", [None] * len(sub["key"]))
        ]
        labels = self.split_label.labels(metas)
        return {
            "key": sub["key"],
            "meta": np.asarray(metas, dtype=object),
            "pixel_values": sub["pixel_values"],
            "input_ids": sub["input_ids"],
            "has_image": sub["image_mask"],
            "has_text": sub["text_mask"],
            "label": np.asarray(labels, dtype=np.int64),
        }


def e2e_tensors(batch: Any, dims: dict[str, int], device: Any) -> tuple[dict, dict, Tensor]:
    """A numpy (or Arrow) batch of E2EPreprocess rows -> (inputs, masks, labels) on device."""
    if isinstance(batch, pa.Table):
        batch = {c: batch.column(c).to_numpy(zero_copy_only=False) for c in batch.column_names}
    pix = torch.from_numpy(
        np.stack(batch["pixel_values"])
        if batch["pixel_values"].dtype == object
        else np.asarray(batch["pixel_values"])
    )
    ids = torch.from_numpy(np.asarray(np.stack(list(batch["input_ids"])), dtype=np.int64))
    # uint8 on the wire; each model normalises for its own image preset.
    feats = {"image": pix.to(device), "text": ids.to(device)}
    masks = {
        m: torch.from_numpy(np.asarray(batch[f"has_{m}"], dtype=bool)).to(device)
        for m in ("image", "text")
    }
    return feats, masks, torch.from_numpy(np.array(batch["label"], dtype=np.int64)).to(device)


def iter_e2e(urls: list[str], stage: E2EPreprocess, rows: int = 256) -> Iterator[dict[str, Any]]:
    """Stream preprocessed rows of the shards without Ray (evaluation, tests)."""
    from pipeline.io.shards import read_shard

    for url in urls:
        for table in read_shard(url, frozenset(), rows, 1 << 28):
            batch = {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}
            out = stage(batch)
            if len(out["key"]):
                yield out


def open_shards(data: str, label_field: str | None, image_size: int, max_tokens: int) -> Any:
    """The FeatureSet-like description of a build output for end-to-end training: its tars,
    lineage (the SHA-256 of build.json) and label vocabulary (one streaming pass)."""
    import hashlib

    from pipeline.fingerprint import short_hash
    from pipeline.io.fs import read_bytes
    from pipeline.io.shards import build_marker, read_shard, resolve_shards
    from pipeline.train.data import FeatureSet

    urls = resolve_shards(data)
    manifest = build_marker(data)
    raw = read_bytes(manifest) if manifest else "\n".join(urls).encode()
    tables = (t for url in urls for t in read_shard(url, frozenset(), 4096, 1 << 28))
    classes = label_vocabulary(tables, label_field)
    preprocessing = {
        "image_size": image_size,
        "max_text_tokens": max_tokens,
        "tokenizer": "minilm",
        "image_preset": "imagenet",
    }
    return FeatureSet(
        root=data,
        files=urls,
        dims={"image": 0, "text": 0},
        fingerprint=short_hash(raw),
        manifest_sha256=hashlib.sha256(raw).hexdigest(),
        preprocessing=preprocessing,
        classes=sorted(classes),
    )


def e2e_split(fs_: Any, split: str, cfg: Any) -> Any:
    """One split of the shards as a Ray Dataset of preprocessed rows (read tasks, one per tar)."""
    import ray.data

    from pipeline.io.shards import SAMPLE_SCHEMA, make_shard_datasource
    from pipeline.runner import map_stages, task_concurrency

    ds = ray.data.read_datasource(  # the stage's cap, so the two fuse
        make_shard_datasource(fs_.files, {}, 256, 64 << 20),
        override_num_blocks=len(fs_.files),
        concurrency=task_concurrency(1.0),
    )
    stage = E2EPreprocess(
        split, cfg.val_fraction, fs_.classes, cfg.label_field, cfg.image_size, cfg.max_text_tokens
    )
    return map_stages(ds, [stage], columns=SAMPLE_SCHEMA.names)
