"""mmpipe: an offline batch pipeline for multimodal corpora on Ray."""

__version__ = "0.1.0"
