"""Features throughput against bare loops measured in the same run (not a timed test).

    python bench/bench_features.py [--shards bench/_work/out-mmpipe] [--n-enc 1024]

Needs built shards (bench/bench_build.py writes bench/_work/out-mmpipe). Prints ratios.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench.corpus import cores

WORK = Path(__file__).resolve().parent / "_work"


def steady(ds, batch_size=None) -> tuple[float, int]:
    """Rows/s from the first batch out to the last (start-up excluded), and rows seen."""
    marks = []
    rows = 0
    for b in ds.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
        rows += b.num_rows
        marks.append((time.perf_counter(), rows))
    (ta, ra), (tb, rb) = marks[0], marks[-1]
    return (rb - ra) / (tb - ta), rows


def _wav_clips() -> list[bytes]:
    import soundfile as sf

    rng = np.random.default_rng(0)
    clips = []
    for _ in range(64):
        buf = io.BytesIO()
        wave = (0.3 * rng.normal(size=32000)).astype(np.float32)
        sf.write(buf, wave, 16000, format="WAV", subtype="PCM_16")
        clips.append(buf.getvalue())
    return clips


def _shard_images(url: str) -> list[bytes]:
    from pipeline.io.shards import read_shard

    tables = read_shard(url, frozenset(), 10**9, 1 << 40)
    return [r for t in tables for r in t.column("image").to_pylist()]


def _bare_loop(kind: str, arg: str, n: int, start_at: float, q) -> None:
    """One core's bare loop: the stage called directly, single-threaded, warm-up excluded."""
    import torch

    torch.set_num_threads(1)
    if kind == "image":
        from pipeline.preprocess.image import ImagePreprocess

        # The job's setting: uint8 out, normalised in the encoder actor.
        st, items, key = (
            ImagePreprocess("imagenet", dtype="uint8"),
            _shard_images(arg.split("|")[0]),
            "image",
        )
    else:
        from pipeline.preprocess.audio import AudioLogMel, LogMelConfig

        st, items, key = AudioLogMel(LogMelConfig(num_frames=200)), _wav_clips(), "audio"
    st.ensure_setup()
    st({key: items[:64]})
    time.sleep(max(0.0, start_at - time.time()))  # start together: the cores are shared
    t0, done = time.perf_counter(), 0
    if kind == "image":  # like the job: read this core's shards, then preprocess them
        for url in arg.split("|"):
            items = _shard_images(url)
            for i in range(0, len(items), 64):
                st({key: items[i : i + 64]})
            done += len(items)
    while done < n:
        st({key: items[:64]})
        done += 64
    q.put(done / (time.perf_counter() - t0))


def bare_on_cores(kind: str, args: list[str], n: int, n_cores: int) -> float:
    """Items/s of ``n_cores`` bare loops running at once, one process per core, summed."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    start_at = time.time() + 8.0  # after every process has imported torch and warmed up
    procs = [
        ctx.Process(target=_bare_loop, args=(kind, args[i], n, start_at, q)) for i in range(n_cores)
    ]
    for p in procs:
        p.start()
    rates = [q.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return float(sum(rates))


def warm_workers(stage, rows: list[dict]) -> None:
    """Run ``stage`` once on a few blocks, so that worker start-up (importing torch, setup)
    is not in the steady window: the bare loop's setup is outside its timing too."""
    import ray.data

    from pipeline.runner import map_stages

    ds = ray.data.from_items(rows, override_num_blocks=max(2, cores() * 2))
    for _ in map_stages(ds, [stage], columns=list(rows[0]), batch_size=64).iter_batches(
        batch_size=None
    ):
        pass


def bench_readers(urls: list[str]) -> dict:
    import ray.data

    from pipeline.io.shards import make_shard_datasource

    out = {}
    t0 = time.perf_counter()
    n = ray.data.read_webdataset(urls, decoder=None).count()
    out["read_webdataset_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ds = ray.data.read_datasource(
        make_shard_datasource(urls, {}, 256, 64 << 20), override_num_blocks=len(urls)
    )
    m = ds.count()
    out["shard_reader_s"] = time.perf_counter() - t0
    out["rows"] = n
    assert n == m, (n, m)
    return out


def bench_image(urls: list[str], n_cores: int) -> dict:
    import ray.data

    images = _shard_images(urls[0])
    # Each bare process reads and preprocesses its share of the shards the Ray run reads.
    bare = bare_on_cores("image", ["|".join(urls[i::n_cores]) for i in range(n_cores)], 0, n_cores)
    from pipeline.features.config import FeaturesConfig
    from pipeline.features.stages import FeaturePreprocess
    from pipeline.io.shards import SAMPLE_SCHEMA, make_shard_datasource
    from pipeline.runner import map_stages

    cfg = FeaturesConfig(shards="x", output="y", text=None, batch_size=64)
    ds = ray.data.read_datasource(
        make_shard_datasource(urls, {}, 64, 64 << 20), override_num_blocks=len(urls)
    )
    warm_workers(
        FeaturePreprocess(cfg, "imagenet"),
        [{"key": str(i), "shard": "w", "image": images[i]} for i in range(256)],
    )
    ds = map_stages(
        ds, [FeaturePreprocess(cfg, "imagenet")], columns=SAMPLE_SCHEMA.names, batch_size=64
    )
    ips, rows = steady(ds.select_columns(["key"]))
    return {"bare_all_cores": bare, "ray_steady": ips, "ratio": ips / bare, "rows": rows}


def _to_pixels(b: dict) -> dict:
    return {
        "key": np.arange(len(b["data"])).astype(str),
        "pixel_values": np.asarray(b["data"], dtype=np.float32),
    }


def bench_encoder(n: int, n_cores: int) -> dict:
    import ray.data
    import torch

    from pipeline.features.config import EncoderConfig, FeaturesConfig
    from pipeline.features.stages import EncodeStage
    from pipeline.models.encoders import image_encoder
    from pipeline.runner import map_stages

    torch.set_num_threads(n_cores)
    enc = image_encoder("resnet18", "random")
    x = torch.randn(64, 3, 224, 224)
    with torch.inference_mode():
        enc.model(x)  # warm-up
        t0 = time.perf_counter()
        for _ in range(n // 64):
            enc.model(x)
    bare = (n // 64) * 64 / (time.perf_counter() - t0)
    image = EncoderConfig(name="resnet18", weights="random")
    cfg = FeaturesConfig(
        shards="x",
        output="y",
        text=None,
        batch_size=64,
        actors=1,
        image=image,
        actor_num_cpus=float(n_cores),
    )
    ds = ray.data.range_tensor(n, shape=(3, 224, 224), override_num_blocks=max(1, n // 64))
    ds = ds.map_batches(_to_pixels, batch_size=64, num_cpus=0.1)
    ds = map_stages(ds, [EncodeStage(cfg)], columns=["key", "pixel_values"], batch_size=64)
    ips, rows = steady(ds.select_columns(["key"]))
    return {
        "bare_threads": n_cores,
        "bare_ips": bare,
        "actor_steady": ips,
        "ratio": ips / bare,
        "rows": rows,
    }


def bench_logmel(n: int, n_cores: int) -> dict:
    import ray.data

    from pipeline.runner import map_stages

    clips = _wav_clips()
    bare = bare_on_cores("logmel", [""] * n_cores, n // n_cores, n_cores)
    from pipeline.features.config import EncoderConfig, FeaturesConfig
    from pipeline.features.stages import FeaturePreprocess

    # The job's own path: FeaturePreprocess with audio only (it drops the encoded bytes).
    audio = EncoderConfig(name="audio_cnn", weights="random")
    cfg = FeaturesConfig(
        shards="x", output="y", image=None, text=None, audio=audio, audio_frames=200
    )
    items = [{"key": str(i), "shard": "s", "audio": clips[i % 64]} for i in range(n)]
    warm_workers(FeaturePreprocess(cfg), items[:512])
    ds = ray.data.from_items(items, override_num_blocks=max(2, n // 256))
    ds = map_stages(ds, [FeaturePreprocess(cfg)], columns=list(items[0]), batch_size=64)
    ips, rows = steady(ds)
    return {"bare_all_cores": bare, "ray_steady": ips, "ratio": ips / bare, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", default=str(WORK / "out-mmpipe"))
    ap.add_argument("--n-enc", type=int, default=1024)
    ap.add_argument("--n-audio", type=int, default=8192)
    ap.add_argument("--only", choices=["readers", "image", "encoder", "logmel"])
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    n_cores = cores()
    urls = sorted(str(p) for p in (Path(args.shards) / "shards").glob("*.tar"))
    if not urls:
        raise SystemExit(f"no shards under {args.shards}; run bench/bench_build.py first")
    from pipeline.session import ray_session

    results: dict = {"cores": n_cores}
    # One logical CPU more than cores: the encoder actor holds all cores (its threads), and
    # the light feeder/read tasks need a slot too, or the pool deadlocks on a small machine.
    with ray_session(None, num_cpus=n_cores + 1):
        if args.only in (None, "readers"):
            results["readers"] = r = bench_readers(urls)
            print(
                f"readers over {r['rows']} samples: read_webdataset {r['read_webdataset_s']:.1f}s, "
                f"shard reader {r['shard_reader_s']:.1f}s"
            )
        if args.only in (None, "image"):
            results["image"] = r = bench_image(urls, n_cores)
            print(
                f"image preprocess: bare {r['bare_all_cores']:.0f}/s on {n_cores} cores, Ray {r['ray_steady']:.0f}/s, "
                f"ratio {r['ratio']:.2f} (goal 0.9)"
            )
        if args.only in (None, "encoder"):
            results["encoder"] = r = bench_encoder(args.n_enc, n_cores)
            print(
                f"resnet18@224 b64: bare {r['bare_ips']:.0f} img/s ({n_cores} threads), "
                f"actor {r['actor_steady']:.0f}, ratio {r['ratio']:.2f} (goal 0.9)"
            )
        if args.only in (None, "logmel"):
            results["logmel"] = r = bench_logmel(args.n_audio, n_cores)
            print(
                f"log-mel 2s clips: bare {r['bare_all_cores']:.0f}/s on {n_cores} cores, Ray {r['ray_steady']:.0f}/s, "
                f"ratio {r['ratio']:.2f} (goal 0.8)"
            )
    (WORK / "bench_features.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
