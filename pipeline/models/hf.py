"""Hugging Face ``transformers`` towers as frozen encoders: CLIP, SigLIP, CLAP, wav2vec2, HuBERT,
Whisper's encoder, and any image or text model (pooled or mean-pooled)."""

from __future__ import annotations

import functools
import pickle
from typing import Any

from pipeline.errors import UserError
from pipeline.models.sources import folder_digest, local_folder

# What each modality's tower is asked for, in order, when the model has it: a paired model's
# projection into the shared space first (CLIP, SigLIP, CLAP), then the model's own output.
FEATURE_METHODS = {
    "image": "get_image_features",
    "text": "get_text_features",
    "audio": "get_audio_features",
}


def quiet_transformers() -> None:
    """No progress bars or load reports from a batch job; never reach for a hub implicitly."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def load_model(folder: str) -> Any:
    """The architecture the folder was saved as (``config.architectures``), else AutoModel.

    Loading is safe: safetensors, or ``torch.load(weights_only=True)`` for ``.bin`` files
    (transformers refuses anything else), and never ``trust_remote_code``.
    """
    import transformers
    from transformers import AutoConfig, AutoModel

    quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(folder)
        arch = (getattr(config, "architectures", None) or [None])[0]
        cls = getattr(transformers, arch, None) if arch else None
        if cls is None or not hasattr(cls, "from_pretrained"):
            cls = AutoModel
        return cls.from_pretrained(folder, trust_remote_code=False).eval()
    except (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError) as e:
        raise UserError(
            f"cannot load a transformers model from {folder}: {str(e).splitlines()[0][:200]}"
        ) from None


def _pooled(out: Any, mask: Any | None) -> Any:
    """One vector per sample from whatever the model returned: a tensor, a projected
    embedding, the pooled output, or (failing those) the masked mean of the hidden states."""
    import torch

    if isinstance(out, torch.Tensor):
        return out.flatten(1)
    for name in ("image_embeds", "text_embeds", "audio_embeds", "pooler_output"):
        value = getattr(out, name, None)
        if value is not None:
            return value.flatten(1)
    return masked_mean(out.last_hidden_state, mask)


def masked_mean(hidden: Any, mask: Any | None) -> Any:
    if mask is None:
        return hidden.mean(dim=1)
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def _tower(modality: str, hf: Any, passes_mask: bool) -> Any:
    import torch.nn as nn

    class ImageTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hf = hf

        def forward(self, pixel_values: Any) -> Any:
            fn = getattr(self.hf, FEATURE_METHODS["image"], None) or self.hf
            return _pooled(fn(pixel_values=pixel_values), None)

    class TextTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hf = hf

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            kw = {"attention_mask": attention_mask} if passes_mask else {}
            method = getattr(self.hf, FEATURE_METHODS["text"], None)
            if method is not None:
                return _pooled(method(input_ids=input_ids, **kw), None)
            out = self.hf(input_ids=input_ids, **kw)
            embeds = getattr(out, "text_embeds", None)
            # "Any text model with mean pooling": the sentence-transformers convention.
            return embeds if embeds is not None else masked_mean(out[0], attention_mask)

    class AudioTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hf = hf
            self.input_name = getattr(hf, "main_input_name", "input_values")

        def forward(self, values: Any, attention: Any, is_longer: Any) -> Any:
            method = getattr(self.hf, FEATURE_METHODS["audio"], None)
            if method is not None:  # CLAP: the projected audio embedding
                return _pooled(method(values, is_longer=is_longer), None)
            kw: dict[str, Any] = {self.input_name: values}
            if passes_mask:
                kw["attention_mask"] = attention
            # Whisper is an encoder-decoder: its audio embedding is the encoder's output.
            seq2seq = getattr(self.hf.config, "is_encoder_decoder", False)
            body = self.hf.get_encoder() if seq2seq else self.hf
            hidden = body(**kw).last_hidden_state
            return masked_mean(hidden, self._frames(hidden.shape[1], attention))

        def _frames(self, n: int, attention: Any) -> Any:
            """The input mask brought to the encoder's frame rate: conv feature extractors
            (wav2vec2, HuBERT) know their own; Whisper halves its mel frames once."""
            if hasattr(self.hf, "_get_feature_vector_attention_mask"):
                return self.hf._get_feature_vector_attention_mask(n, attention)
            step = max(1, attention.shape[1] // n)
            return attention[:, ::step][:, :n]

    return {"image": ImageTower, "text": TextTower, "audio": AudioTower}[modality]()


@functools.lru_cache(maxsize=8)
def model_processor(modality: str, source: str) -> Any:
    """The model's own preprocessing: image processor, tokenizer or feature extractor."""
    from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoTokenizer

    quiet_transformers()
    folder = local_folder(source)
    loader: dict[str, Any] = {
        "image": AutoImageProcessor,
        "text": AutoTokenizer,
        "audio": AutoFeatureExtractor,
    }
    try:
        return loader[modality].from_pretrained(folder)
    except (OSError, ValueError, KeyError, TypeError) as e:
        what = {"image": "image processor", "text": "tokenizer", "audio": "feature extractor"}
        raise UserError(
            f"{source} has no {what[modality]} for its {modality} tower "
            f"({str(e).splitlines()[0][:160]}); save it next to the model with save_pretrained"
        ) from None


def passes_attention(modality: str, source: str) -> bool:
    """Whether the library itself hands the model an attention mask: SigLIP's tokenizer and
    group-norm wav2vec2 extractors do not, and the model was trained without one."""
    proc = model_processor(modality, source)
    if modality == "text":
        return "attention_mask" in getattr(proc, "model_input_names", ["attention_mask"])
    if modality == "audio":
        return bool(getattr(proc, "return_attention_mask", False))
    return False


def hf_encoder(modality: str, source: str) -> tuple[Any, str]:
    """``(tower, weights_id)``: a frozen ``nn.Module`` returning ``[B, dim]``, and the sha256 of
    the folder's weight files."""
    folder = local_folder(source)
    digest = folder_digest(folder)
    hf = load_model(folder)
    has = {
        "image": hasattr(hf, "get_image_features") or hf.main_input_name == "pixel_values",
        "text": hasattr(hf, "get_text_features") or hf.main_input_name == "input_ids",
        "audio": hasattr(hf, "get_audio_features")
        or hf.main_input_name in ("input_values", "input_features"),
    }[modality]
    if not has:
        raise UserError(
            f"{source} ({type(hf).__name__}) has no {modality} tower; "
            f"set features.{modality} to a model that takes {modality}"
        )
    return _tower(modality, hf, passes_attention(modality, source)).eval(), digest
