"""The run artefact of `mmpipe train`: ``model.pt``, ``model.json`` and lineage, saved and loaded here.

Everything that uses a trained model (eval, export, embed, search) opens it through
``RunArtifact``: the weights' hash is recorded once, when they are saved, and a process loads
a model file once, however many stages ask for it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.errors import UserError
from pipeline.fingerprint import SHORT, short_hash
from pipeline.io.fs import dirname, exists, join, read_bytes, write_bytes_atomic
from pipeline.models.weights import load_tensors, torchscript_quietly

if TYPE_CHECKING:
    from pipeline.features.config import FeaturesConfig

MODEL_FILE = "model.pt"  # a plain state dict: loads with weights_only=True
INFO_FILE = "model.json"
TORCHSCRIPT_FILE = "model.torchscript.pt"
EXPORT_DIR = "export"  # mmpipe export: RUN/export/{model.onnx, model.torchscript.pt, export.json}
EXPORT_FILE = "export.json"
ONNX_FILE = "model.onnx"
MODALITIES = ("image", "text", "audio")
# (weights URL, version, device) -> the loaded module: actors and search load a model file once.
_LOADED: dict[tuple[str, str, str], Any] = {}


@dataclass(frozen=True)
class ModelSpec:
    """Enough to rebuild the untrained architecture; weights are loaded into it afterwards."""

    fusion_type: str  # early | mid | late | gated | bilinear | zero_shot (no parameters)
    preset: str | None  # None: a FusionModel on features; else an end-to-end preset
    dims: dict[str, int]
    d_model: int
    embed_dim: int
    n_classes: int  # 0: no classifier head
    image_size: int = 64  # end-to-end presets: the square crop they see
    max_text_tokens: int = 32
    # Modality pairs ("image~audio") whose agreement the classifier sees (FusionModel only).
    relations: tuple[str, ...] = ()


def build_model(spec: ModelSpec, *, dropout: float = 0.0, freeze_fraction: float = 1.0) -> Any:
    """The one place that maps a spec to a module: training, eval, export and embed all use it."""
    if spec.fusion_type == "zero_shot":  # mmpipe zero-shot: a paired model's own space
        from pipeline.fusion.zeroshot import zero_shot_module

        return zero_shot_module(spec.dims)
    if spec.preset == "finetune":
        from pipeline.fusion.presets import FinetuneFusion

        return FinetuneFusion(
            spec.fusion_type,
            spec.n_classes,
            d=spec.d_model,
            embed_dim=spec.embed_dim,
            dropout=dropout,
            freeze_fraction=freeze_fraction,
        )
    if spec.preset:
        from pipeline.fusion.presets import ClassicFusion

        return ClassicFusion(
            spec.preset, spec.n_classes, d=spec.d_model, embed_dim=spec.embed_dim, dropout=dropout
        )
    from pipeline.fusion.model import FusionModel

    return FusionModel(
        spec.dims,
        spec.fusion_type,
        d=spec.d_model,
        embed_dim=spec.embed_dim,
        n_classes=spec.n_classes,
        dropout=dropout,
        relations=spec.relations,
    )


@dataclass(frozen=True)
class Lineage:
    """What a model was trained on: the features (or build) and how they were preprocessed."""

    features: str
    features_fingerprint: str
    features_manifest_sha256: str
    preprocessing: dict[str, Any]  # {"config": features config, "encoders": ...} on features
    train_config: dict[str, Any]


@dataclass(frozen=True)
class ModelInfo:
    """``model.json``: the architecture, the label vocabulary and the lineage."""

    fusion: str  # what reports show: the preset's name, else the fusion type
    preset: str | None
    fusion_type: str
    image_size: int
    max_text_tokens: int
    dims: dict[str, int]
    d_model: int
    embed_dim: int
    classes: list[str]
    label_field: str | None
    dropout: float
    lineage: Lineage
    model_sha256: str = ""  # of model.pt's bytes, recorded when it is saved
    # The pairs whose agreement the classifier sees, and the classes found to mark matching
    # pairs (pipeline/train/matching.py); empty: none were.
    relations: tuple[str, ...] = ()
    matching: tuple[str, ...] = ()

    @property
    def spec(self) -> ModelSpec:
        same = (
            "fusion_type",
            "preset",
            "d_model",
            "embed_dim",
            "image_size",
            "max_text_tokens",
            "relations",
        )
        return ModelSpec(
            dims=dict(self.dims),
            n_classes=len(self.classes) if self.label_field else 0,
            **{name: getattr(self, name) for name in same},
        )

    @property
    def modalities(self) -> list[str]:
        return [m for m in MODALITIES if m in self.dims]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelInfo:
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k in names}
        lineage: dict[str, Any] = data.get("lineage") or {}
        fields["lineage"] = Lineage(
            features=str(lineage.get("features") or ""),
            features_fingerprint=str(lineage.get("features_fingerprint") or ""),
            features_manifest_sha256=str(lineage.get("features_manifest_sha256") or ""),
            preprocessing=dict(lineage.get("preprocessing") or {}),
            train_config=dict(lineage.get("train_config") or {}),
        )
        fields.setdefault("fusion_type", data.get("fusion"))
        for name in ("relations", "matching"):  # JSON lists; the dataclass is frozen
            fields[name] = tuple(fields.get(name) or ())
        return cls(**fields)


def save_run(out: str, info: ModelInfo, weights: dict[str, Any]) -> ModelInfo:
    """Write ``model.pt`` (a plain state dict), then ``model.json`` with the weights' SHA-256."""
    import hashlib

    import torch

    buf = io.BytesIO()
    torch.save(weights, buf)
    write_bytes_atomic(join(out, MODEL_FILE), buf.getvalue())
    info = dataclasses.replace(info, model_sha256=hashlib.sha256(buf.getvalue()).hexdigest())
    text = json.dumps(info.to_json(), indent=2, default=str)
    write_bytes_atomic(join(out, INFO_FILE), text.encode())
    return info


@dataclass(frozen=True)
class RunArtifact:
    """A trained model as a job finds it: where its weights are, what they are, their version."""

    run_dir: str
    weights_url: str
    kind: str  # "state_dict" (model.pt), "torchscript" or "onnx" (mmpipe export)
    info: ModelInfo
    version: str  # the first 16 hex digits of the weight file's SHA-256
    model_id: str  # recorded in every embeddings row

    @classmethod
    def open(cls, spec: str, model_id: str | None = None) -> RunArtifact:
        """``spec``: a run directory, its ``model.pt``, or an export (TorchScript ``.pt`` or
        ``.onnx``) in the run directory or its ``export/`` folder: the run's ``model.json``
        says how inputs were preprocessed.

        Raises:
            UserError: no model there.
        """
        if exists(join(spec, INFO_FILE)):
            run_dir, weights, kind = spec, join(spec, MODEL_FILE), "state_dict"
        elif spec.endswith((".pt", ".onnx")) and exists(spec):
            run_dir, weights = dirname(spec), spec
            if posixpath.basename(run_dir.rstrip("/")) == EXPORT_DIR and not exists(
                join(run_dir, INFO_FILE)
            ):
                run_dir = dirname(run_dir.rstrip("/"))
            if spec.endswith(".onnx"):
                kind = "onnx"
            else:
                kind = "state_dict" if posixpath.basename(spec) == MODEL_FILE else "torchscript"
        else:
            raise UserError(
                f"model {spec!r} is neither a run directory of mmpipe train nor a model file in "
                f"one; pass RUN_DIR, RUN_DIR/{EXPORT_DIR}/{ONNX_FILE} or "
                f"RUN_DIR/{EXPORT_DIR}/{TORCHSCRIPT_FILE}"
            )
        if not exists(join(run_dir, INFO_FILE)) or not exists(weights):
            raise UserError(
                f"{run_dir} holds no trained model (model.json, model.pt); run mmpipe train first"
            )
        info = ModelInfo.from_json(json.loads(read_bytes(join(run_dir, INFO_FILE))))
        # The hash recorded at save time names model.pt; an export is hashed here, once.
        recorded = info.model_sha256[:SHORT] if kind == "state_dict" else ""
        version = recorded or short_hash(read_bytes(weights))
        name = posixpath.basename(run_dir.rstrip("/")) or "model"
        return cls(run_dir, weights, kind, info, version, model_id or f"{name}:{info.fusion}")

    @property
    def modalities(self) -> list[str]:
        return self.info.modalities

    @property
    def run_version(self) -> str:
        """The version of the run's own weights, which its exports were traced from."""
        return self.info.model_sha256[:SHORT]

    @property
    def dim(self) -> int:
        return int(self.info.embed_dim)

    @property
    def preprocessing(self) -> str:
        """The fingerprint of the features run the model was trained on (config + encoders)."""
        return str(self.info.lineage.features_fingerprint or "")

    @property
    def encoders(self) -> dict[str, Any]:
        return dict(self.info.lineage.preprocessing.get("encoders") or {})

    @property
    def image_preset(self) -> str:
        """The image normalisation preset the image encoder was trained with."""
        return str((self.encoders.get("image") or {}).get("preset") or "imagenet")

    def features_config(self, **runtime: Any) -> FeaturesConfig:
        """The features config the model was trained on, limited to its modalities; ``runtime``
        overrides how it runs (batch size, device, CPUs), never what it computes."""
        from pipeline.features.config import FeaturesConfig

        data = dict(self.info.lineage.preprocessing["config"])
        # What the model never sees is left out on purpose: not decoded, not encoded.
        unseen = [m for m in MODALITIES if m not in self.info.dims]
        data["ignore"] = sorted({*data.get("ignore", []), *unseen})
        data.update({k: v for k, v in runtime.items() if v is not None})
        return FeaturesConfig(**data)

    def check_encoders(self, found: dict[str, dict[str, Any]]) -> None:
        """Refuse to run with encoders other than those the model was trained on."""
        for m in self.modalities:
            a, b = self.encoders.get(m) or {}, found.get(m) or {}
            fields = ("encoder", "weights", "dim")
            if tuple(a.get(f) for f in fields) != tuple(b.get(f) for f in fields):
                raise UserError(
                    f"the {m} encoder here ({b.get('encoder')}, weights {b.get('weights')}) "
                    f"differs from the one the model was trained on ({a.get('encoder')}, weights "
                    f"{a.get('weights')}); install the same encoder weights"
                )

    def load(self, device: str = "cpu", threads: int | None = None) -> Any:
        """The model in eval mode on ``device``: eager with its weights, the TorchScript
        module, or an onnxruntime session (``threads``: its intra-op threads). Loaded once
        per process and device."""
        slot = (self.weights_url, self.version, device)
        if slot in _LOADED:
            return _LOADED[slot]
        blob = read_bytes(self.weights_url)
        if self.kind == "onnx":
            from pipeline.models.onnx_runtime import OnnxModel

            model = OnnxModel(blob, device, threads=threads, name=self.weights_url)
        elif self.kind == "torchscript":
            import torch

            with torchscript_quietly():
                model = torch.jit.load(io.BytesIO(blob), map_location=device)
        else:
            model = build_model(self.info.spec)
            model.load_state_dict(load_tensors(blob, self.weights_url))
            model.to(device)
        _LOADED[slot] = model.eval()
        return model


def load_run(run_dir: str) -> tuple[Any, dict[str, Any]]:
    """The trained model (on CPU, eval mode) and its ``model.json`` as a mapping."""
    art = RunArtifact.open(run_dir)
    if art.kind != "state_dict":
        raise UserError(f"{run_dir} is not a run directory; pass the folder mmpipe train wrote")
    return art.load(), art.info.to_json()
