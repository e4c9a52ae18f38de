"""Thin job entrypoints: one main(argv) per stage, each reading a YAML config from jobs/configs/."""
