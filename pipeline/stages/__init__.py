"""Per-sample stages: fetch references, decode and validate each modality, derive keys."""
