"""The end-to-end presets' modules: textbook CNN + LSTM and conv + self-attention, and the
features encoders fine-tuned under a FusionModel."""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.preprocess.image import normalize_uint8

CLASSIC_PRESETS = ("cnn_lstm", "attn_conv")  # from scratch; "finetune" adapts the features encoders
VOCAB = 30522  # the MiniLM (BERT uncased) word pieces the tokenizer emits


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
        from pipeline.fusion.model import FusionModel
        from pipeline.models.encoders import image_encoder, text_encoder

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
