"""Near-duplicate images: the banded search finds what the pairwise rule finds, on real photos.

The search runs here without Ray over random hashes built to collide (copies, a few bits
flipped, chains), against ``neardup.sequential``, the rule by its definition. On Ray, a
build of scikit-image photographs with resized, re-encoded, brightened and cropped copies
rejects the copies naming their original, keeps every distinct photo, and writes the same
bytes whether the search runs in one task or over hash partitions.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.build import neardup

# (base hash, bits to flip) per row: few bases, so rows collide in every way.
ROWS = st.lists(st.tuples(st.integers(0, 5), st.lists(st.integers(0, 63), max_size=4)), max_size=60)
BASES = np.random.default_rng(7).integers(0, 2**63, size=6, dtype=np.uint64) * np.uint64(2)


def table(rows, order):
    h = []
    for base, flips in rows:
        v = int(BASES[base])
        for f in flips:
            v ^= 1 << f
        h.append(v)
    pos = [order.index(i) * 1000 + 3 for i in range(len(rows))]  # not in row order
    return pa.table(
        {
            "pos": pa.array(pos, pa.int64()),
            "key": [f"k{p}" for p in pos],
            "phash": pa.array(h, pa.uint64()),
        }
    )


@settings(max_examples=300, deadline=None)
@given(rows=ROWS, distance=st.integers(0, 8), data=st.data())
def test_banded_search_rejects_what_the_pairwise_rule_rejects(rows, distance, data):
    order = data.draw(st.permutations(list(range(len(rows)))))
    t = table(rows, order)
    found = neardup.one_task(t, distance).sort_by("pos")
    want = neardup.sequential(t, distance)
    assert found.column("pos").to_pylist() == want.column("pos").to_pylist()
    assert found.column("message").to_pylist() == want.column("message").to_pylist()
    assert set(found.column("reason").to_pylist()) <= {"near_duplicate"}


def test_a_chain_names_its_root_and_the_neighbour_it_goes_through():
    a = 0
    b = a ^ 0b1111  # 4 bits from a
    c = b ^ 0b11110000  # 4 from b, 8 from a
    t = pa.table(
        {"pos": [1, 2, 3], "key": ["a", "b", "c"], "phash": pa.array([a, b, c], pa.uint64())}
    )
    msgs = dict(zip(*neardup.one_task(t, 4).select(["pos", "message"]).to_pydict().values()))
    assert msgs == {
        2: "near duplicate of a: pHash distance 4 (near_dup_distance 4)",
        3: "near duplicate of a: pHash distance 8, reached through b at distance 4 "
        "(near_dup_distance 4)",
    }


def test_bands_split_64_bits_so_that_any_near_pair_shares_one():
    for d in range(neardup.MAX_DISTANCE + 1):
        edges = neardup.band_edges(d)
        assert len(edges) == d + 1 and sum(w for _, w in edges) == 64
        assert edges[-1][0] == 0 and max(w for _, w in edges) - min(w for _, w in edges) <= 1


def test_the_hash_is_imagehash_phash_and_upright_for_any_exif_orientation():
    import imagehash
    from PIL import Image, ImageOps
    from skimage import data

    from pipeline.validate.phash import perceptual_hash

    photo = Image.fromarray(data.astronaut())
    for o in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = o
        buf = io.BytesIO()
        photo.save(buf, "JPEG", exif=exif.tobytes())
        im = Image.open(io.BytesIO(buf.getvalue()))
        im.load()
        upright = ImageOps.exif_transpose(im)
        assert perceptual_hash(im, o) == perceptual_hash(upright)
    assert perceptual_hash(photo) == int(str(imagehash.phash(photo.reduce(8))), 16)


# --- real photos, on Ray --------------------------------------------------------------
# skimage's cat() is chelsea() again: left out, so that "distinct" means distinct.
PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "brick", "grass", "gravel")


def variants(im):
    """The copies a crawl meets: resized, re-encoded, brightened, cropped by 2%."""
    from PIL import Image

    w, h = im.size
    dx, dy = w // 50, h // 50
    return {
        "half": im.resize((w // 2, h // 2), Image.Resampling.BOX),
        "q30": _jpeg(im.resize((w * 2 // 3, h * 2 // 3)), 30),
        "bright": Image.eval(im, lambda v: min(255, int(v * 1.1))),
        "crop": im.crop((dx, dy, w - dx, h - dy)),
    }


def _jpeg(im, q):
    from PIL import Image

    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=q)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def photo_manifest(root):
    """Originals first, then their copies: (manifest, {copy key: original key})."""
    from PIL import Image
    from skimage import data

    root.mkdir(parents=True, exist_ok=True)
    lines, copies = [], {}
    # At most 256 px a side: the copies still differ as a crawl's do, and PNGs stay quick.
    originals = {}
    for n in PHOTOS:
        im = Image.fromarray(getattr(data, n)()).convert("RGB")
        originals[n] = im.reduce(max(1, max(im.size) // 256))
    for n, im in originals.items():
        im.save(root / f"{n}.png")
        lines.append({"key": n, "image": f"{n}.png", "text": n})
    for n, im in originals.items():
        for v, copy in variants(im).items():
            copy.save(root / f"{n}-{v}.png")
            lines.append({"key": f"{n}-{v}", "image": f"{n}-{v}.png", "text": f"{n} {v}"})
            copies[f"{n}-{v}"] = n
    path = root / "manifest.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path, copies


def _build(tmp_path, name, manifest, **kw):
    from pipeline.build.job import run_build
    from pipeline.config import BuildConfig

    cfg = BuildConfig(
        input=str(manifest), output=str(tmp_path / name), near_duplicates=True,
        shard_samples=8, **kw,
    )  # fmt: skip
    return run_build(cfg, quiet=True)


@pytest.mark.usefixtures("ray_local")
def test_copies_of_real_photos_are_rejected_naming_the_original(tmp_path):
    manifest, copies = photo_manifest(tmp_path / "photos")
    report = _build(tmp_path, "b", manifest)
    out = tmp_path / "b"
    index = pq.read_table(out / "index")
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert index.num_rows + len(rejects) == len(PHOTOS) * 5
    assert {r["reason"] for r in rejects} == {"near_duplicate"}
    assert all(r["modality"] == "image" for r in rejects)
    for r in rejects:  # precision: every reject is a copy, and names its original
        assert copies[r["key"]] in r["message"].split(":")[0], r
    kept = set(index.column("key").to_pylist())
    assert set(PHOTOS) <= kept  # no distinct photo is lost
    found = {r["key"] for r in rejects}
    for v in ("half", "bright"):  # recall: resized and brightened copies, all of them
        assert {f"{n}-{v}" for n in PHOTOS} <= found, v
    # JPEG q30 at 2/3 size moves fine textures (grass, brick) past 4 bits; photos stay near.
    assert len({f"{n}-q30" for n in PHOTOS} & found) >= 6
    assert report["counts"]["rejected"] == len(rejects)
    assert index.schema.field("image_phash").type == pa.uint64()
    assert index.column("image_phash").null_count == 0


@pytest.mark.slow  # four shuffles on Ray: ~2 min on 2 CPUs, mostly fixed per-pass cost
@pytest.mark.usefixtures("ray_local")
def test_near_dup_search_over_hash_partitions_writes_what_one_task_writes(tmp_path, monkeypatch):
    import pipeline.build.distributed as d
    from tests.test_dedup import _same_build

    manifest, _ = photo_manifest(tmp_path / "photos")
    _build(tmp_path, "one", manifest)
    monkeypatch.setattr(d, "ONE_TASK_ROWS", 0)
    _build(tmp_path, "parts", manifest, dedup_partition_rows=12)
    _same_build(tmp_path / "one", tmp_path / "parts")
