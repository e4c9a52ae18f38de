"""The job entrypoint runs from its YAML config and refuses a bad one before any work."""

from __future__ import annotations

import json

import pytest

from jobs.build_dataset import main


def test_bad_config_stops_before_work(tmp_path, capsys):
    cfg = tmp_path / "b.yaml"
    cfg.write_text(
        f"build:\n  input: {tmp_path}/m.jsonl\n  output: {tmp_path}/o\n  resize_mode: squash\n"
    )
    assert main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "resize_mode" in err and "keep_ratio" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.usefixtures("ray_local")
def test_shipped_config_runs(tmp_path):
    import yaml

    from pipeline.sample_corpus import write_corpus

    write_corpus(str(tmp_path / "c"), n=8, seed=2)
    with open("jobs/configs/build.yaml") as f:
        shipped = yaml.safe_load(f)
    cfg = tmp_path / "b.yaml"
    cfg.write_text(yaml.safe_dump(shipped))
    out = tmp_path / "o"
    assert (
        main(
            [
                "--config",
                str(cfg),
                "--input",
                str(tmp_path / "c" / "manifest.jsonl"),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "build.json").read_text())
    assert report["config"]["resize"] == 256 and report["counts"]["written"] == 8


def test_features_job_refuses_a_bad_config(tmp_path, capsys):
    from jobs.extract_features import main as features_main

    cfg = tmp_path / "f.yaml"
    cfg.write_text(
        f"features:\n  shards: {tmp_path}\n  output: {tmp_path}/o\n  image: {{name: alexnet}}\n"
    )
    assert features_main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "alexnet" in err and len(err.strip().splitlines()) == 1


def test_train_job_refuses_a_bad_config_and_the_shipped_one_validates(tmp_path, capsys):
    import yaml

    from jobs.train_fusion import main as train_main
    from pipeline.train.config import TrainConfig

    with open("jobs/configs/train.yaml") as f:
        TrainConfig(**yaml.safe_load(f)["train"])  # the shipped config is valid as it stands
    cfg = tmp_path / "t.yaml"
    cfg.write_text(f"train:\n  data: {tmp_path}\n  output: {tmp_path}/o\n  fusion: concat\n")
    assert train_main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "fusion" in err and "'mid'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    cfg.write_text(
        f"train:\n  data: {tmp_path}\n  output: {tmp_path}/o\n  epochs: 3\n  learning_rate: 1\n"
    )
    assert train_main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "unknown field 'learning_rate'" in err and "lr" in err


def test_the_shipped_features_config_shows_the_defaults():
    """jobs/configs/features.yaml is what `mmpipe features` does with no config at all."""
    import yaml

    from pipeline.features.config import FeaturesConfig

    with open("jobs/configs/features.yaml") as f:
        shipped = yaml.safe_load(f)["features"]
    paths = {"shards": shipped["shards"], "output": shipped["output"]}
    assert FeaturesConfig(**shipped) == FeaturesConfig(**paths)
    # It shows every field a user is likely to change; these few stay in docs/features.md.
    unshown = set(FeaturesConfig.model_fields) - set(shipped)
    assert unshown <= {"preprocess_num_cpus", "amp", "max_block_bytes", "image_decode"}


def test_one_registry_names_every_job_that_the_cli_jobs_and_submit_run():
    import importlib
    import inspect

    from pipeline.cli import build_parser
    from pipeline.registry import JOB_NAMES, job

    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in JOB_NAMES:
        spec = job(name)
        assert name in commands, f"mmpipe has no {name} command"
        entry = importlib.import_module(spec.entrypoint)
        assert f'job_main("{name}"' in inspect.getsource(entry.main), spec.entrypoint
        mod, fn = spec.runner.split(":")
        run = getattr(importlib.import_module(mod), fn)
        params = inspect.signature(run).parameters
        for kw in (*spec.flags, *dict(spec.fixed), "address", "quiet"):
            assert kw in params, f"{spec.runner} takes no {kw}"
        assert set(spec.paths) <= set(spec.config.model_fields), spec.paths
