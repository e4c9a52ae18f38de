"""Typed configuration of ``mmpipe train``, loaded from YAML and CLI options."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from pipeline.fusion.artifact import ModelSpec

Modality = Literal["image", "text", "audio"]


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    section: ClassVar[str] = "train"
    label: ClassVar[str] = "train config"

    data: str  # an `mmpipe features` output directory
    output: str  # the run directory
    # late (and dropout 0.3) beat mid and the linear-probe baselines on real media, and keep
    # the shapes corpus' quality bar (docs/benchmarks.md, "Choosing the training defaults").
    fusion: Literal["early", "mid", "late", "gated", "bilinear"] = "late"
    # auto: when the labels mark whether a row's modalities match (same / different: found by
    # a held-out CCA per class before training), the contrastive loss pulls together only the
    # matching rows, and the classifier sees each pair's agreement; no other fusion of what
    # each modality says alone can read such a label (docs/train.md). off: never. Fusion
    # models on features only.
    relations: Literal["auto", "off"] = "auto"
    # A classic image-text model trained end to end from the shards instead of a fusion model
    # on features: `data` is then a build output (or tar pattern).
    # "finetune": the features stage's pretrained image and text encoders under `fusion`,
    # trained end to end with the lower `freeze_fraction` of each encoder frozen.
    preset: Literal["cnn_lstm", "attn_conv", "finetune"] | None = None
    freeze_fraction: float = Field(0.8, ge=0.0, le=1.0)
    image_size: int = Field(64, ge=16, le=512)  # presets: the square crop they see
    max_text_tokens: int = Field(32, ge=4, le=512)  # presets: token ids per caption
    modalities: list[Modality] | None = None  # None: every modality the features hold
    label_field: str | None = "label"  # a key of each sample's metadata; None: no classifier
    d_model: int = Field(256, ge=8, le=8192)
    embed_dim: int = Field(128, ge=8, le=4096)
    dropout: float = Field(0.3, ge=0.0, lt=1.0)
    # Drop one present modality of a training row with this probability (one always stays):
    # the model learns to work with what a sample has, and single-modality scores are fair.
    modality_dropout: float = Field(0.2, ge=0.0, lt=1.0)
    epochs: int = Field(40, ge=1, le=100000)
    max_steps: int | None = Field(None, ge=1)  # stop early after this many optimizer steps
    batch_size: int = Field(64, ge=2, le=1 << 20)
    lr: float = Field(2e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(0.01, ge=0.0)
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_steps: int = Field(20, ge=0)
    grad_accum: int = Field(1, ge=1, le=1024)
    clip_norm: float | None = Field(1.0, gt=0.0)
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    w_contrastive: float = Field(1.0, ge=0.0)
    w_classify: float = Field(1.0, ge=0.0)
    # Classification from each modality alone too, as eval scores it: the fused accuracy rose
    # 0.938 -> 0.953 and 0.977 -> 0.987 on two real-media corpora, 3 seeds (docs/benchmarks.md).
    # Fusion models on features only.
    w_single: float = Field(1.0, ge=0.0)
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = 0
    early_stop_patience: int | None = Field(8, ge=1)
    # What early stopping watches, and what picks the epoch whose weights the run keeps. auto:
    # validation accuracy when the run classifies, else the validation loss. The loss sums the
    # contrastive and per-modality terms, which turn up epochs before the accuracy stops
    # rising: kept by it, the photographs scored 0.926 against 0.963 (docs/benchmarks.md).
    early_stop_metric: Literal["auto", "val_loss", "val_acc"] = "auto"
    # The saved model is an exponential moving average of the weights over optimizer steps
    # (torch.optim.swa_utils), which evens out where the last step happened to land; null:
    # the last weights. Fusion models on features only (docs/train.md).
    ema_decay: float | None = Field(0.97, gt=0.0, lt=1.0)
    # Standardise each feature by the training split's mean and spread before the projectors,
    # as the linear probes do (docs/train.md). Fusion models on features only.
    standardize: bool = True
    checkpoint_every_steps: int | None = Field(None, ge=1)  # besides every epoch
    log_every_steps: int = Field(1, ge=1)  # step metrics; each read waits for the GPU
    # Keep the feature splits in Ray's object store across epochs (false: re-read each epoch).
    cache_data: bool = True
    workers: int = Field(1, ge=1, le=4096)
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus: Literal["auto", "on", "off"] = "auto"
    max_failures: int = Field(2, ge=0)
    keep_checkpoints: int = Field(2, ge=1)
    # Where Ray Train persists checkpoints: local path or s3:// (default: OUTPUT/ray).
    storage_path: str | None = None

    def model_spec(
        self, dims: dict[str, int], n_classes: int, relations: tuple[str, ...] = ()
    ) -> ModelSpec:
        """The architecture this config trains on features of ``dims``."""
        from pipeline.fusion.artifact import ModelSpec

        same = {"preset", "d_model", "embed_dim", "image_size", "max_text_tokens"}
        return ModelSpec(
            fusion_type=self.fusion,
            dims=dict(dims),
            n_classes=n_classes if self.label_field else 0,
            relations=tuple(relations),
            **self.model_dump(include=same),
        )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.w_contrastive == 0 and (self.w_classify == 0 or self.label_field is None):
            raise ValueError(
                "nothing to train: w_contrastive is 0 and there is no classification loss"
            )
        return self


def load_train_config(overrides: dict[str, Any], yaml_path: str | None = None) -> TrainConfig:
    """``load_config`` for training."""
    from pipeline.config import load_config

    return load_config(TrainConfig, overrides, yaml_path)
