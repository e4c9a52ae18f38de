"""Classic image-text baselines trained end to end from the shards: CNN + LSTM, conv + self-attention."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.preprocess.image import ImagePreprocess, normalize_uint8
from pipeline.preprocess.text import TextTokenize
from pipeline.stage import Stage
from pipeline.train.data import SplitLabel, label_vocabulary

CLASSIC_PRESETS = ("cnn_lstm", "attn_conv")  # from scratch; "finetune" adapts the features encoders
VOCAB = 30522  # the MiniLM (BERT uncased) word pieces the tokenizer emits


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


class _CNN(nn.Module):
    """Four conv blocks (conv, batch norm, ReLU, 2x2 max pool): the textbook image encoder."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(chans):
            layers += [nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(2)]
        self.body = nn.Sequential(*layers)
        self.out_dim = chans[-1]

    def forward(self, x: Tensor) -> Tensor:  # [B, C, h, w] feature map
        return self.body(x)


class ClassicFusion(nn.Module):
    """``cnn_lstm``: CNN image encoder + LSTM over token embeddings, concatenated, then a fully
    connected classifier. ``attn_conv``: a conv stem whose positions go through self-attention,
    and token embeddings through self-attention, concatenated. Both expose the FusionModel
    interface (per-modality and fused embeddings, logits), so training, eval and the report
    treat them like any other model."""

    def __init__(
        self, preset: str, n_classes: int, d: int = 128, embed_dim: int = 64, dropout: float = 0.1
    ) -> None:
        super().__init__()
        if preset not in CLASSIC_PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known: {list(CLASSIC_PRESETS)}")
        self.preset, self.mods = preset, ["image", "text"]
        self.fusion_kind, self.n_classes = preset, n_classes
        self.cnn = _CNN()
        self.tok = nn.Embedding(VOCAB, d, padding_idx=0)
        if preset == "cnn_lstm":
            self.lstm = nn.LSTM(d, d // 2, batch_first=True, bidirectional=True)
        else:
            self.pos = nn.Parameter(torch.randn(128, d) * 0.02)
            self.img_in = nn.Linear(self.cnn.out_dim, d)
            self.img_pos = nn.Parameter(torch.randn(64, d) * 0.02)
            self.img_attn = nn.TransformerEncoder(
                nn.TransformerEncoderLayer(d, 4, 2 * d, dropout, batch_first=True),
                1,
                enable_nested_tensor=False,
            )
            self.txt_attn = nn.TransformerEncoder(
                nn.TransformerEncoderLayer(d, 4, 2 * d, dropout, batch_first=True),
                1,
                enable_nested_tensor=False,
            )
        img_dim = self.cnn.out_dim if preset == "cnn_lstm" else d
        self.img_proj, self.txt_proj = nn.Linear(img_dim, d), nn.Linear(d, d)
        self.head = nn.Sequential(nn.Linear(2 * d + 2, d), nn.ReLU(), nn.Dropout(dropout))
        self.embed = nn.ModuleDict(
            {"image": nn.Linear(d, embed_dim), "text": nn.Linear(d, embed_dim)}
        )
        self.fused_embed = nn.Linear(d, embed_dim)
        self.classifier = nn.Linear(d, n_classes) if n_classes else None
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def _image(self, x: Tensor) -> Tensor:
        if x.dtype == torch.uint8:
            x = normalize_uint8(x, "imagenet")
        fmap = self.cnn(x)
        if self.preset == "cnn_lstm":
            return self.img_proj(fmap.mean(dim=(2, 3)))
        tokens = self.img_in(fmap.flatten(2).transpose(1, 2))  # [B, h*w, d]
        tokens = tokens + self.img_pos[: tokens.shape[1]]
        return self.img_proj(self.img_attn(tokens).mean(1))

    def _text(self, ids: Tensor) -> Tensor:
        pad = ids == 0
        e = self.tok(ids)
        keep = (~pad).unsqueeze(-1).float()
        if self.preset == "cnn_lstm":
            out, _ = self.lstm(e)
        else:
            pad = pad.clone()
            pad[:, 0] = False  # never a fully padded row (a missing text): attention needs one key
            out = self.txt_attn(e + self.pos[: e.shape[1]], src_key_padding_mask=pad)
        return self.txt_proj((out * keep).sum(1) / keep.sum(1).clamp_min(1.0))

    def forward(self, feats: dict[str, Tensor], mask: dict[str, Tensor]) -> dict[str, Any]:
        hi, ht = self._image(feats["image"]), self._text(feats["text"])
        mi, mt = mask["image"].float().unsqueeze(1), mask["text"].float().unsqueeze(1)
        fused = self.head(torch.cat([hi * mi, ht * mt, mi, mt], dim=1))  # concatenation, then FC
        out: dict[str, Any] = {
            "emb": {
                "image": F.normalize(self.embed["image"](hi), dim=-1),
                "text": F.normalize(self.embed["text"](ht), dim=-1),
            },
            "fused": F.normalize(self.fused_embed(fused), dim=-1),
        }
        if self.classifier is not None:
            out["logits"] = self.classifier(fused)
        return out


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


class FinetuneFusion(nn.Module):
    """The features stage's pretrained encoders (EfficientNet-Lite0, MiniLM), fine-tuned end
    to end under a FusionModel; the lower ``freeze_fraction`` of each encoder's parameter
    tensors (from the input side) stay frozen."""

    def __init__(
        self,
        fusion: str,
        n_classes: int,
        *,
        d: int,
        embed_dim: int,
        dropout: float,
        freeze_fraction: float,
        image_weights: str = "default",
    ) -> None:
        super().__init__()
        from pipeline.models.encoders import image_encoder, text_encoder
        from pipeline.train.model import FusionModel

        img, txt = image_encoder("efficientnet_lite0", image_weights), text_encoder("minilm")
        self.image_enc, self.text_enc, self.image_preset = (
            img.model,
            txt.model,
            img.preset or "imagenet",
        )
        for enc in (self.image_enc, self.text_enc):
            params = list(enc.parameters())
            for p in params[: int(len(params) * freeze_fraction)]:
                p.requires_grad_(False)
        self.head = FusionModel(
            {"image": img.dim, "text": txt.dim},
            fusion,
            d=d,
            embed_dim=embed_dim,
            n_classes=n_classes,
            dropout=dropout,
        )
        self.mods, self.fusion_kind, self.n_classes = self.head.mods, fusion, n_classes
        self.logit_scale = self.head.logit_scale

    def forward(self, feats: dict[str, Tensor], mask: dict[str, Tensor]) -> dict[str, Any]:
        x, ids = feats["image"], feats["text"]
        if x.dtype == torch.uint8:
            x = normalize_uint8(x, self.image_preset)
        h = {"image": self.image_enc(x), "text": self.text_enc(ids, (ids != 0).long())}
        return self.head(h, mask)
