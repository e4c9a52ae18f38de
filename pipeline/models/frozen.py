"""The Encoder record: a frozen feature extractor and its identity, whoever built it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Encoder:
    """A frozen feature extractor: ``forward(**inputs) -> [B, dim]``, with its identity."""

    modality: str
    name: str
    dim: int
    weights_id: str  # sha256 of the weight bytes, "random:<seed>" or a package version
    model: Any  # torch.nn.Module
    preset: str | None = None  # the image preset its preprocessing must use

    @property
    def encoder_id(self) -> str:
        return f"{self.modality}:{self.name}"

    # The batch columns ``model`` takes, in order (a foreign audio tower takes three).
    inputs: tuple[str, ...] = ()

    def to(self, device: str) -> Encoder:
        self.model = self.model.to(device)
        return self
