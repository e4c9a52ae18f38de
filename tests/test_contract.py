"""The stage contract and the owner modules: plan checks, Reject records, the run artefact."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.errors import Reason, Reject, UserError
from pipeline.features.config import EncoderConfig, FeaturesConfig
from pipeline.features.stages import EncodeStage, FeaturePreprocess, FeatureWriter
from pipeline.io.shards import SAMPLE_SCHEMA
from pipeline.stage import Stage, check_plan


def _cfg(**kw):
    audio = EncoderConfig(name="audio_cnn", weights="random")
    return FeaturesConfig(shards="x", output="y", audio=audio, **kw)


def test_the_features_chain_checks_out_from_the_shard_columns():
    cfg = _cfg()
    stages = [FeaturePreprocess(cfg), EncodeStage(cfg), FeatureWriter(cfg, {})]
    assert check_plan(stages, SAMPLE_SCHEMA.names) == [
        "part",
        "reasons",
        "rejects",
        "rows",
        "shard",
        "write_s",
    ]
    # GPU decode: the bytes stay for the actor, which then adds the image mask itself.
    gpu = [FeaturePreprocess(cfg, decode_images=False), EncodeStage(cfg, 1.0, "imagenet")]
    assert "image_mask" in check_plan([*gpu, FeatureWriter(cfg, {})][:2], SAMPLE_SCHEMA.names)


def test_a_broken_chain_fails_when_the_plan_is_built():
    cfg = _cfg()
    with pytest.raises(ValueError, match=r"stage encode reads \['pixel_values'"):
        check_plan([EncodeStage(cfg), FeatureWriter(cfg, {})], SAMPLE_SCHEMA.names)
    with pytest.raises(ValueError, match="feature_writer"):
        check_plan([FeaturePreprocess(cfg), FeatureWriter(cfg, {})], SAMPLE_SCHEMA.names)


def test_run_checks_what_a_stage_reads_and_adds():
    class Liar(Stage):
        name = "liar"
        reads = ("a",)
        adds = ("b",)

        def __call__(self, batch):
            return batch

    with pytest.raises(KeyError, match="needs columns"):
        Liar().run({"x": [1]})
    with pytest.raises(KeyError, match="did not add"):
        Liar().run({"a": [1]})


def test_preprocessing_rejects_carry_a_documented_reason():
    cfg = _cfg(text=None)
    batch = {
        "key": np.array(["k"], dtype=object),
        "shard": np.array(["s"], dtype=object),
        "image": np.array([b"not an image"], dtype=object),
        "audio": np.array([None], dtype=object),
        "text": np.array([None], dtype=object),
        "meta": np.array([None], dtype=object),
    }
    out = FeaturePreprocess(cfg).run(batch)
    rej = Reject.from_json(out["error"][0])
    assert rej.reason is Reason.DECODE_ERROR and rej.stage == "preprocess_image"
    assert json.loads(rej.to_json())[1] == "decode_error"


def test_the_run_artefact_round_trips_and_loads_once(tmp_path):
    import torch

    from pipeline.fusion.artifact import (
        Lineage,
        ModelInfo,
        RunArtifact,
        build_model,
        load_run,
        save_run,
    )

    lineage = Lineage("f", "fp", "sha", {"config": {}}, {})
    info = ModelInfo(
        fusion="late",
        preset=None,
        fusion_type="late",
        image_size=64,
        max_text_tokens=32,
        dims={"image": 8, "text": 4},
        d_model=16,
        embed_dim=8,
        classes=["a", "b"],
        label_field="label",
        dropout=0.0,
        lineage=lineage,
    )
    model = build_model(info.spec)
    saved = save_run(str(tmp_path), info, model.state_dict())
    art = RunArtifact.open(str(tmp_path))
    assert art.info == saved and art.version == saved.model_sha256[:16]
    assert art.model_id == f"{tmp_path.name}:late" and art.modalities == ["image", "text"]
    first = art.load()
    assert art.load() is first  # once per process
    for a, b in zip(first.state_dict().values(), model.state_dict().values()):
        torch.testing.assert_close(a, b)
    _, as_json = load_run(str(tmp_path))
    assert as_json["dims"] == {"image": 8, "text": 4} and as_json["lineage"]["features"] == "f"
    with pytest.raises(UserError, match="neither a run directory"):
        RunArtifact.open(str(tmp_path / "nothing"))


def test_submit_validates_exactly_what_the_job_does(tmp_path):
    from pipeline.registry import job
    from pipeline.submit.package import validate_config

    path = tmp_path / "f.yaml"
    path.write_text(
        json.dumps({"features": {"shards": "s", "output": "o", "image": {"name": "alexnet"}}})
    )
    for check in (
        lambda: validate_config("features", str(path)),
        lambda: job("features").load_config(str(path)),
    ):
        with pytest.raises(UserError, match=r"features config: image.name = 'alexnet' is unknown"):
            check()
    with pytest.raises(UserError, match="unknown job"):
        job("nope")


def _images() -> list:
    from tests import media

    return [media.jpeg(40, 30), b"not an image", None]


def _batch() -> dict:
    """Three samples as the features stages get them: a good image, a corrupt one, none."""
    return {
        "key": np.array(["a", "b", "c"], dtype=object),
        "shard": np.array(["s"] * 3, dtype=object),
        "image": np.array(_images(), dtype=object),
        "text": np.array(["x", "y", None], dtype=object),
        "audio": np.array([None] * 3, dtype=object),
        "meta": np.array([None] * 3, dtype=object),
    }


def test_a_corrupt_image_is_its_samples_reject_and_nothing_else_is():
    from pipeline.preprocess.image import ImagePreprocess

    stage = ImagePreprocess()
    _x, mask, errors = stage.tensors(_images())
    assert mask.tolist() == [True, False, False]
    assert errors[0] is None and errors[2] is None and errors[1].startswith("decode_error: ")


@pytest.mark.parametrize("kind", ["bug", "oom"])
def test_our_own_errors_fail_the_batch_and_reject_no_row(monkeypatch, kind):
    """A bug in our transform, or the GPU out of memory, is never a sample's reject: it fails
    the batch (then the task and the job), where it used to reject every image it touched."""
    import torch

    from pipeline.preprocess.image import ImagePreprocess

    expected = RuntimeError if kind == "bug" else torch.cuda.OutOfMemoryError
    stage = ImagePreprocess()
    stage.ensure_setup()

    def transform(_im):
        raise expected("our transform broke")

    stage.transform = transform  # in this process: the stage's own transform raises
    with pytest.raises(expected, match="our transform broke"):
        stage.tensors(_images())
    # Through the features stages as the job runs them, by the hook that reaches workers.
    monkeypatch.setenv("MMPIPE_FAULT", f"image_transform:raise:{kind}")
    pre = FeaturePreprocess(_cfg())
    batch = _batch()
    with pytest.raises(expected):
        pre(batch)
    monkeypatch.setenv("MMPIPE_FAULT", f"encode:raise:{kind}")
    with pytest.raises(expected):
        EncodeStage(_cfg())(FeaturePreprocess(_cfg())(dict(batch)))


def test_a_processors_failure_on_every_image_is_no_samples_fault():
    from pipeline.models import processors

    class Broken:
        def __call__(self, images):
            raise ValueError("the processor is broken")

    stage = processors.ModelImagePreprocess.__new__(processors.ModelImagePreprocess)
    stage.transform = Broken()
    errors: list = [None, None]
    with pytest.raises(ValueError, match="broken"):
        stage._transform({0: object(), 1: object()}, errors)
    assert errors == [None, None]


def test_on_error_raise_fails_at_a_samples_error_and_reject_keeps_its_row():
    """The named policy: under ``raise`` the first sample error fails the stage (tests and
    debugging ask for it); under ``reject`` (the default) it is that sample's reject."""
    from pipeline.errors import SampleErrorRaised
    from pipeline.failure import bug_line

    batch = _batch()
    pre = FeaturePreprocess(_cfg())
    out = pre.run(dict(batch))
    assert [bool(e) for e in out["error"]] == [False, True, False]
    pre.on_error = "raise"  # what the runner sets on every stage of an on_error: raise job
    with pytest.raises(SampleErrorRaised, match="decode_error") as got:
        pre.run(dict(batch))
    assert bug_line(got.value).startswith("the run stopped at a sample's error, as asked: ")
    # From a Ray task it arrives as Ray Data's wrapper, the worker's traceback as text.
    remote = "\n".join(
        [
            "ray.exceptions.RayTaskError(UserCodeException): ray::Read->MapBatches(_run_stage)()",
            '  File "pipeline/errors.py", line 121, in rejecting',
            f"pipeline.errors.SampleErrorRaised: {got.value}",
        ]
    )

    class UserCodeException(Exception):
        pass

    line = bug_line(UserCodeException(f"UDF failed to process a data block.\n{remote}"))
    assert line == f"the run stopped at a sample's error, as asked: {got.value}", line
    assert pre.run.__self__ is pre and FeaturePreprocess(_cfg()).run(dict(batch))  # no leak
