"""A job whose data does not fit the object store: it spills to disk, completes, and says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas import features_schema

pytestmark = pytest.mark.slow  # a cluster, a proxy or a small object store: long


ROOT = Path(__file__).resolve().parents[1]
DIMS = {"image": 4096, "text": 1024}


def synthetic_features(root: Path, rows: int) -> None:
    """A features directory of the real schema: ~20 KB a row, labels in the metadata."""
    rng = np.random.default_rng(0)
    (root / "parts" / "s0").mkdir(parents=True)
    parts = []
    for i in range(0, rows, 1000):
        n = min(1000, rows - i)
        labels = rng.integers(0, 3, n)
        cols = {"key": [f"k{i + j:07d}" for j in range(n)], "shard": ["s0"] * n}
        for m, d in DIMS.items():
            x = rng.normal(size=(n, d)).astype(np.float32) + labels[:, None] * 0.1
            cols[f"{m}_emb"] = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d)
        cols |= {
            "has_image": [True] * n,
            "has_text": [True] * n,
            "has_audio": [False] * n,
            "meta": [json.dumps({"label": f"c{v}"}) for v in labels],
        }
        name = f"parts/s0/p{i:07d}.parquet"
        pq.write_table(pa.table(cols, schema=features_schema(DIMS)), root / name)
        parts.append(name)
    report = {
        "encoders": {
            m: {"dim": d, "encoder": f"{m}:synthetic", "weights": "random"} for m, d in DIMS.items()
        },
        "parts": parts,
        "fingerprint": "synthetic",
        "config": {},
    }
    (root / "features.json").write_text(json.dumps(report))
    (root / "_SUCCESS").write_text("")


def test_training_splits_larger_than_the_object_store_spill_and_the_run_completes(tmp_path):
    synthetic_features(tmp_path / "f", 6000)  # ~123 MB of features against an 80 MiB store
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["MMPIPE_OBJECT_STORE_MB"] = "80"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "train",
            str(tmp_path / "f"),
            "--output",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            "--batch-size",
            "256",
            "--workers",
            "1",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "train.json").read_text())
    assert report["progress"]["epoch"] == 1
    assert report["object_store"]["spilled_mib"] > 0  # it really went to disk, and is reported
    assert "object store spilled" in res.stderr
