"""resemblyzer: the pretrained GE2E voice encoder from the resemblyzer wheel, as LSTM state means."""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
from typing import Any

from pipeline.errors import UserError

PACKAGE = "resemblyzer"
N_MELS, HIDDEN, LAYERS = 40, 256, 3
# The mean over time of every layer's states, not the final speaker embedding: the lower
# layers keep what was said, the top one who said it. On spoken digits under noise this is
# 0.83 against 0.57 for our MFCC statistics and 0.38 for the speaker embedding
# (docs/benchmarks.md, bench_audio.py).
DIM = HIDDEN * LAYERS
# The front end it was trained on (resemblyzer/hparams.py and audio.py): 16 kHz, 25 ms Hann
# windows every 10 ms, 40 Slaney mel bands of power, clips at -30 dBFS (resemblyzer raises quiet
# ones only; levelling loud ones too measured 0.83 against 0.80 on the digits above).
FRONT_END = {"sample_rate": 16000, "n_mels": N_MELS, "mel_scale": "slaney", "gain_dbfs": -30.0}


def package_weights() -> str:
    """Where the installed wheel keeps ``pretrained.pt``. The package is located, not imported:
    its audio helpers import librosa and webrtcvad, which mmpipe does not install."""
    spec = importlib.util.find_spec(PACKAGE)
    where = list(spec.submodule_search_locations or []) if spec else []
    path = os.path.join(where[0], "pretrained.pt") if where else ""
    if not os.path.exists(path):
        raise UserError(
            "audio encoder resemblyzer needs the resemblyzer package for its weights: "
            "pip install --no-deps resemblyzer, or set audio.weights to a checkpoint"
        )
    return path


def voice_lstm(eps: float = 1e-6) -> Any:
    """log-mel [B, 40, F] (the front end above, in log) -> [B, DIM]; padding frames do not count."""
    import torch
    import torch.nn as nn

    class VoiceLSTM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # One LSTM per layer (the same maths as one 3-layer LSTM in eval mode), so that
            # each layer's states can be pooled.
            self.layers = nn.ModuleList(
                nn.LSTM(N_MELS if i == 0 else HIDDEN, HIDDEN, 1, batch_first=True)
                for i in range(LAYERS)
            )
            self.eps, self.floor = eps, math.log(eps) + 1e-3

        def forward(self, log_mel: Any) -> Any:
            # The features stage pads with log(eps) in every band: padding is found from the
            # input, as mel_stats does, and the graph keeps one input for ONNX.
            real = (log_mel > self.floor).any(dim=1).to(log_mel.dtype)[..., None]  # [B, F, 1]
            n = real.sum(dim=1).clamp(min=1.0)
            # Back to power: the network was trained on power mel, not log.
            x = (log_mel.exp() - self.eps).clamp(min=0).transpose(1, 2)
            means = []
            for lstm in self.layers:
                x, _ = lstm(x)
                means.append((x * real).sum(dim=1) / n)
            return torch.cat(means, dim=1)

    return VoiceLSTM()


def load_voice_lstm(weights: str | None) -> tuple[Any, str]:
    """The model with the wheel's weights (``default``) or a resemblyzer checkpoint of the
    same shape at a path/URL; returns it with the sha256 of the weight bytes."""
    from pipeline.models.weights import load_tensors, read_bytes

    source = package_weights() if weights in (None, "default") else str(weights)
    blob = read_bytes(source)
    obj = load_tensors(blob, source)
    state = obj.get("model_state", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"{source} does not hold a resemblyzer state dict")
    ours = {}
    for i in range(LAYERS):
        for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            key = f"lstm.{p}_l{i}"
            if key not in state:
                raise UserError(f"{source} is not a resemblyzer voice encoder: {key} is missing")
            ours[f"layers.{i}.{p}_l0"] = state[key]
    model = voice_lstm()
    try:
        model.load_state_dict(ours, strict=True)
    except RuntimeError as e:
        raise UserError(
            f"{source}: weights of another shape ({str(e).splitlines()[1:2]})"
        ) from None
    return model.eval(), hashlib.sha256(blob).hexdigest()
