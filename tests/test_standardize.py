"""Feature standardisation: the training split's moments, streamed, saved with the weights."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline.train.standardize import FeatureMoments, combine, local_stats, ray_stats
from schemas import features_schema

DIMS = {"image": 3, "audio": 2}


def _table(n: int, seed: int) -> pa.Table:
    """Feature rows where audio is absent in every third row (null, has_audio false)."""
    rng = np.random.default_rng(seed)
    image = rng.normal([1.0, -5.0, 100.0], [0.1, 3.0, 50.0], (n, 3)).astype(np.float32)
    image[:, 0] = 7.0  # a constant dimension: centred, never scaled up
    audio = rng.normal(2.0, 0.01, (n, 2)).astype(np.float32)
    has_audio = np.arange(n) % 3 != 0
    schema = features_schema(DIMS)
    cols = {
        "key": [f"k{seed}_{i}" for i in range(n)],
        "shard": ["s"] * n,
        "image_emb": list(image),
        "has_image": [True] * n,
        "audio_emb": [a if h else None for a, h in zip(audio, has_audio)],
        "has_audio": has_audio.tolist(),
        "has_text": [False] * n,
    }
    table = pa.table({f.name: cols.get(f.name, [None] * n) for f in schema}, schema=schema)
    return table, image, audio[has_audio]


def test_moments_count_present_rows_only_and_leave_constant_features_unscaled():
    table, image, audio = _table(60, 0)
    stats = local_stats(table, DIMS)
    for m, x in (("image", image), ("audio", audio)):
        mean, inv = (np.asarray(v) for v in stats[m])
        np.testing.assert_allclose(mean, x.mean(0), rtol=1e-5)
        std = x.std(0)
        want = np.where(std > 1e-6, 1 / np.maximum(std, 1e-6), 1.0)
        np.testing.assert_allclose(inv, want, rtol=1e-3)
    assert stats["image"][1][0] == 1.0  # the constant dimension
    # Batches summed in any grouping give the same figures as one pass.
    parts = [FeatureMoments(DIMS)(table.slice(0, 25)), FeatureMoments(DIMS)(table.slice(25))]
    again = combine(parts, DIMS)
    for m in DIMS:
        np.testing.assert_allclose(again[m][0], stats[m][0], rtol=1e-5)
        np.testing.assert_allclose(again[m][1], stats[m][1], rtol=1e-4)


def test_ray_stats_equal_the_in_memory_figures(ray_local):
    import ray.data

    tables = [_table(40, s)[0] for s in range(3)]
    ds = ray.data.from_arrow(tables)
    got, want = ray_stats(ds, DIMS), local_stats(pa.concat_tables(tables), DIMS)
    for m in DIMS:
        np.testing.assert_allclose(got[m][0], want[m][0], rtol=1e-5)
        np.testing.assert_allclose(got[m][1], want[m][1], rtol=1e-4)


def test_the_projector_standardises_and_old_weights_load_as_identity():
    from pipeline.fusion.model import FusionModel

    model = FusionModel(DIMS, "late", d=8, embed_dim=4, n_classes=2).eval()
    old = {k: v for k, v in model.state_dict().items() if not k.endswith((".shift", ".scale"))}
    table, _, _ = _table(30, 1)
    stats = local_stats(table, DIMS)
    model.set_feature_stats(stats)
    proj = model.proj["image"]
    x = torch.randn(5, 3)
    mean, inv = (torch.tensor(v) for v in stats["image"])
    with torch.no_grad():
        np.testing.assert_allclose(proj(x), proj.net((x - mean) * inv), rtol=1e-6)
    saved = model.state_dict()
    assert torch.equal(saved["proj.image.shift"], mean)
    fresh = FusionModel(DIMS, "late", d=8, embed_dim=4, n_classes=2)
    fresh.load_state_dict(saved)  # the figures travel with the weights
    assert torch.equal(fresh.proj["audio"].scale, torch.tensor(stats["audio"][1]))
    fresh.load_state_dict(old)  # a model saved before standardisation: identity
    assert not fresh.proj["image"].shift.any() and bool((fresh.proj["image"].scale == 1).all())


@pytest.mark.parametrize("standardize", [True, False])
def test_training_saves_the_figures_only_when_asked(tmp_path, standardize):
    from pipeline.train.config import TrainConfig
    from pipeline.train.loop import fit_local

    train, _, _ = _table(64, 2)
    train = train.append_column("label", pa.array(np.arange(64) % 2, pa.int64()))
    cfg = TrainConfig(
        data="x", output="y", epochs=1, batch_size=16, standardize=standardize, d_model=8
    )
    tr = fit_local(cfg, train, train, DIMS, 2)
    weights = tr.final_weights()  # the averaged model's: its buffers were copied after set
    shift = weights["proj.image.shift"]
    if standardize:
        np.testing.assert_allclose(shift.numpy(), local_stats(train, DIMS)["image"][0])
    else:
        assert not shift.any()
