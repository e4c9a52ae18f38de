"""GPU paths of mmpipe features, exercised directly (no Ray): correctness against the CPU path
and resnet50 images/s with JPEG decode on the GPU against decode on CPU workers.

    python bench/bench_gpu.py [--n 2048] [--workers 14] [--json OUT.json]

Not a test: it needs a CUDA device and prints figures for docs/benchmarks.md.
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


def photo_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """Real photographs shipped with scikit-image, cropped and scaled to ~640x480 JPEGs."""
    from PIL import Image

    bases = []
    try:
        from skimage import data

        for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina"):
            try:
                arr = getattr(data, name)()
                if arr.ndim == 3 and arr.shape[2] == 3:
                    bases.append(Image.fromarray(arr))
            except Exception:
                continue
    except ImportError:
        pass
    rng = np.random.default_rng(seed)
    if not bases:  # no scikit-image: smooth random fields, still real JPEG work
        bases = [
            Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).resize((1024, 768))
        ]
    out = []
    for i in range(n):
        im = bases[i % len(bases)]
        w, h = im.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = im.crop((x, y, x + cw, y + ch)).resize((640, 480) if cw >= ch else (480, 640))
        buf = io.BytesIO()
        crop.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class _CpuDecode:
    """A picklable DataLoader dataset: batch i -> uint8 [B,3,224,224] decoded by Pillow."""

    def __init__(self, jpegs: list[bytes], batch: int) -> None:
        self.jpegs, self.batch = jpegs, batch

    def __len__(self) -> int:
        return len(self.jpegs) // self.batch

    def __getitem__(self, i: int):
        import torch

        from pipeline.preprocess.image import ImagePreprocess

        torch.set_num_threads(1)
        st = ImagePreprocess("imagenet", dtype="uint8")
        x, _, _ = st.tensors(self.jpegs[i * self.batch : (i + 1) * self.batch])
        return x


def rate(fn, n_items: int, repeat: int = 3) -> float:
    import torch

    fn()  # warm-up: cuDNN autotune, nvJPEG handles, worker start-up
    torch.cuda.synchronize()
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = max(best, n_items / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--json")
    args = ap.parse_args()

    import torch

    from pipeline.features.config import EncoderConfig, FeaturesConfig
    from pipeline.features.stages import EncodeStage
    from pipeline.preprocess.audio import LogMelConfig, log_mel, mel_filterbank
    from pipeline.preprocess.image import ImagePreprocess, normalize_uint8

    assert torch.cuda.is_available(), "needs a CUDA device"
    res: dict = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
    }
    jpegs = photo_jpegs(args.n)
    res["jpeg_kb_mean"] = round(sum(map(len, jpegs)) / len(jpegs) / 1024, 1)

    # 1. nvJPEG + GPU resize against Pillow + CPU resize, in uint8 levels.
    cpu_u8 = ImagePreprocess("imagenet", dtype="uint8")({"image": jpegs[:64]})["pixel_values"]
    gpu = ImagePreprocess("imagenet", device="cuda", dtype="uint8")
    gpu_u8, mask, _ = gpu.tensors(jpegs[:64])
    diff = np.abs(gpu_u8.cpu().numpy().astype(np.int16) - cpu_u8.astype(np.int16))
    res["decode_gpu_vs_cpu_uint8"] = {
        "mean_abs": float(diff.mean()),
        "p99_abs": float(np.percentile(diff, 99)),
        "all_decoded": bool(mask.all()),
    }

    # 2. The encoder actor class on the GPU (bf16 autocast, channels_last) against fp32 on CPU.
    cfg = FeaturesConfig(
        shards="x",
        output="y",
        image=EncoderConfig(name="resnet50", weights="random"),
        text=None,
        audio=EncoderConfig(name="audio_cnn", weights="random"),
        device="cuda",
        amp="bf16",
        actor_num_cpus=4,
    )
    torch.manual_seed(0)
    st = EncodeStage(cfg, gpus=1.0)
    st.ensure_setup()
    cpu_models = {
        m: __import__("copy").deepcopy(e.model).float().cpu() for m, e in st.encoders.items()
    }
    for m in cpu_models.values():
        m.to(memory_format=torch.contiguous_format)
    lm_cfg = LogMelConfig(num_frames=200)
    fb = torch.from_numpy(mel_filterbank(400, 64, 16000, 0.0, 8000.0))
    waves = torch.randn(64, 31840) * 0.3
    mel_cpu = log_mel(waves, lm_cfg, fb)
    mel_gpu = log_mel(waves.cuda(), lm_cfg, fb.cuda()).cpu()
    res["log_mel_gpu_vs_cpu_max_abs"] = float((mel_gpu - mel_cpu).abs().max())
    batch = {
        "key": np.arange(64).astype(str),
        "pixel_values": cpu_u8,
        "log_mel": mel_cpu.numpy(),
        "error": np.array([""] * 64, dtype=object),
    }
    out = st(dict(batch))
    with torch.inference_mode():
        ref_img = cpu_models["image"](normalize_uint8(torch.from_numpy(cpu_u8), "imagenet")).numpy()
        ref_aud = cpu_models["audio"](mel_cpu).numpy()

    def cos(a, b):
        return float(
            (np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min()
        )

    res["encode_bf16_gpu_vs_fp32_cpu_min_cosine"] = {
        "image": cos(out["image_emb"], ref_img),
        "audio": cos(out["audio_emb"], ref_aud),
    }
    # The in-actor decode path (what image_decode=gpu runs) against pixels decoded on CPU.
    dec = EncodeStage(cfg, gpus=1.0, decode_preset="imagenet")
    dec.ensure_setup()
    dec.encoders = st.encoders  # the same weights as above
    out2 = dec(
        {
            "key": batch["key"],
            "image": list(jpegs[:64]),
            "log_mel": mel_cpu.numpy(),
            "error": batch["error"].copy(),
        }
    )
    res["encode_from_gpu_decode_vs_cpu_decode_min_cosine"] = cos(
        out2["image_emb"], out["image_emb"]
    )

    # 3. Throughput, resnet50 at 224, bf16, channels_last, batch args.batch.
    model = st.encoders["image"].model
    b, n = args.batch, (args.n // args.batch) * args.batch
    on_gpu = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs[:n]]
    x0 = gpu.tensors(jpegs[:b])[0]

    def model_only():
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            x = normalize_uint8(x0, "imagenet").to(memory_format=torch.channels_last)
            for _ in range(n // b):
                model(x).float().cpu()

    def gpu_decode():
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            for i in range(0, n, b):
                x, _, _ = gpu.tensors(jpegs[i : i + b])
                x = normalize_uint8(x, "imagenet").to(memory_format=torch.channels_last)
                model(x).float().cpu()

    def gpu_decode_only():
        for i in range(0, n, b):
            gpu.tensors(jpegs[i : i + b])

    loader = torch.utils.data.DataLoader(
        _CpuDecode(jpegs[:n], b),
        batch_size=None,
        num_workers=args.workers,
        pin_memory=True,
        persistent_workers=True,
        prefetch_factor=4,
    )

    def cpu_decode():
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            for x in loader:
                x = normalize_uint8(x.cuda(non_blocking=True), "imagenet")
                model(x.to(memory_format=torch.channels_last)).float().cpu()

    def cpu_decode_only():
        for _ in loader:
            pass

    del on_gpu
    res["resnet50_images_per_s"] = {
        "model_only": rate(model_only, n),
        "decode_on_gpu": rate(gpu_decode, n),
        f"decode_on_cpu_{args.workers}_workers": rate(cpu_decode, n),
        "gpu_decode_alone": rate(gpu_decode_only, n),
        f"cpu_decode_alone_{args.workers}_workers": rate(cpu_decode_only, n),
    }
    mel_in = torch.randn(256, 31840).cuda()
    res["log_mel_gpu_clips_per_s"] = rate(
        lambda: [log_mel(mel_in, lm_cfg, fb.cuda()) for _ in range(8)], 8 * 256
    )
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
