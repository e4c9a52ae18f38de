"""Per-sample validation: fetch references, decode and check each modality, derive keys."""
