"""Build throughput against a bare single-process loop (x cores) and against img2dataset.

    python bench/bench_build.py --skip-local [--runs loopback:10000 loopback:30000 80:4000]

Each HTTP run serves the same JPEGs from a host whose CPU is measured and left out: nginx with
one worker on 127.0.0.1 (``loopback``), or ``tests/http_host.py`` answering each GET after a
fixed latency in ms (a far host). img2dataset (2 processes, the best of a thread sweep) and
``mmpipe build`` (the CLI, with the task's resize and quality in a YAML file and no other
setting) fetch the same URLs in turn. Printed per run: wall times and their ratio, each
tool's own CPU per image (the machine's busy CPU during its run less the server's), mmpipe's
first chunk, and the bare image work (decode, resize, encode, tar write) measured in the same
run. docs/benchmarks.md records the figures with this command.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.corpus import cores, make_jpeg_corpus, url_list

WORK = Path(__file__).resolve().parent / "_work"
SIZE, QUALITY = 256, 90


def bare_loop(manifest: Path, limit: int) -> dict[str, float]:
    """Images/s, and CPU ms per image, of one process doing the same decode, resize, encode
    and tar write."""
    from PIL import Image

    from pipeline.validate.image import ImageOptions, resample_filter, target_size

    rows = [json.loads(line) for line in manifest.read_text().splitlines()[:limit]]
    opts = ImageOptions(resize=SIZE, resize_mode="keep_ratio", image_format="jpg", quality=QUALITY)
    out = io.BytesIO()
    t0, c0 = time.perf_counter(), time.process_time()
    with tarfile.open(fileobj=out, mode="w") as tf:
        for r in rows:
            data = (manifest.parent / r["image"]).read_bytes()
            im = Image.open(io.BytesIO(data))
            im.load()
            if im.mode != "RGB":  # the corpus has no EXIF rotation; skip every avoidable copy
                im = im.convert("RGB")
            im = im.resize(target_size(im.width, im.height, opts), resample_filter("area", False))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=QUALITY)
            for name, payload in (
                (f"{r['key']}.jpg", buf.getvalue()),
                (f"{r['key']}.txt", r["text"].encode()),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"ips": len(rows) / wall, "cpu_ms": 1000 * cpu / len(rows)}


def private_mb(proc: object) -> float:
    """A process's private memory in MiB: RSS less shared pages (the object store's)."""
    mem = proc.memory_info()  # type: ignore[attr-defined]
    return (mem.rss - mem.shared) / 2**20


class RssMonitor:
    """Peak RSS of this process (the driver) and of its children (Ray's workers).

    ``worker_task``: the last task title (``ray::<task>``) the largest worker ran before its
    peak, so a figure says which step holds the memory, not only how much.
    ``worker_private`` (``driver_private``): the largest worker's (the driver's) RSS less
    its shared pages. Blocks a process reads from Ray's object store are mapped shared
    memory and count in its RSS; Ray's own memory monitor subtracts them
    (``ray._private.memory_monitor``), and so does this.
    ``by_task``: per task title, the peak RSS and private memory of a worker running it.
    ``cpu_s``: CPU seconds of this process and of every process under it (Ray's workers, raylet,
    GCS) since the monitor started, as last sampled.
    """

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.driver = self.worker = self.total = self.worker_private = self.driver_private = 0
        self.worker_task = ""
        self.by_task: dict[str, list[int]] = {}
        self._last: dict[int, str] = {}
        self._cpu: dict[int, float] = {}
        self._cpu0 = self._own_cpu()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(0.2):
            try:
                kids = self.proc.children(recursive=True)
                seen = [(k.memory_info(), " ".join(k.cmdline()[:1])) for k in kids]
                for k in kids:
                    t = k.cpu_times()
                    self._cpu[k.pid] = t.user + t.system
            except (psutil.Error, OSError):
                continue
            rss = [(k.pid, m, name) for k, (m, name) in zip(kids, seen) if "ray::" in name]
            own = self.proc.memory_info()
            self.driver = max(self.driver, own.rss)
            self.driver_private = max(self.driver_private, own.rss - own.shared)
            self.total = max(self.total, sum(m.rss for _, m, _ in rss))
            for pid, m, name in rss:
                # A worker keeps its memory when it goes idle: name the task it last ran.
                if name != "ray::IDLE":
                    self._last[pid] = name
                task = self._last.get(pid, name)
                private = m.rss - m.shared
                peak = self.by_task.setdefault(task, [0, 0])
                peak[0], peak[1] = max(peak[0], m.rss), max(peak[1], private)
                if m.rss > self.worker:
                    self.worker, self.worker_task = m.rss, task
                self.worker_private = max(self.worker_private, private)

    def _own_cpu(self) -> float:
        t = self.proc.cpu_times()
        return t.user + t.system

    @property
    def cpu_s(self) -> float:
        return self._own_cpu() - self._cpu0 + sum(self._cpu.values())

    def tasks_mb(self, top: int = 6) -> dict[str, list[int]]:
        """The ``top`` task titles by peak RSS: ``[rss_mb, private_mb]`` each."""
        ranked = sorted(self.by_task.items(), key=lambda kv: -kv[1][0])[:top]
        return {name: [r // 2**20, p // 2**20] for name, (r, p) in ranked}

    def __enter__(self) -> RssMonitor:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def run_mmpipe(
    manifest: Path, out: Path, n_cpus: int, fetch_concurrency: int | None = None
) -> dict:
    """One build on a fresh local Ray; returns wall, start-up and steady-state figures."""
    import ray

    from pipeline.build import job
    from pipeline.build.report import ProgressLine
    from pipeline.config import BuildConfig

    marks: list[tuple[float, int]] = []
    chunk_s: list[float] = []
    orig = ProgressLine.update

    def update(self: ProgressLine, summary) -> None:  # record when each chunk finished
        orig(self, summary)
        marks.append((time.perf_counter(), self.rows))
        chunk_s.extend(summary.column("seconds").to_pylist())

    ProgressLine.update = update  # type: ignore[method-assign]
    subprocess.run(["rm", "-rf", str(out)], check=True)
    cfg = BuildConfig(
        input=str(manifest),
        output=str(out),
        resize=SIZE,
        resize_mode="keep_ratio",
        image_format="jpg",
        image_quality=QUALITY,
        # The bench's hosts serve from 127.0.0.1, which data URLs may reach only when opened.
        allow_hosts=["127.0.0.1"],
        **({"fetch_concurrency": fetch_concurrency} if fetch_concurrency else {}),
    )
    t0 = time.perf_counter()
    with RssMonitor() as mon:
        report = job.run_build(cfg, ray_num_cpus=n_cpus, quiet=True)
    wall = time.perf_counter() - t0
    ProgressLine.update = orig  # type: ignore[method-assign]
    assert not ray.is_initialized()
    # Steady state: from the first finished chunk to the last, excluding start-up and the tail.
    (ta, ra), (tb, rb) = marks[0], marks[-1]
    steady = (rb - ra) / (tb - ta) if tb > ta else float("nan")
    return {
        "rows": report["counts"]["input_rows"],
        "written": report["counts"]["written"],
        "wall_s": wall,
        "startup_s": report["timings_s"]["startup"],
        "first_chunk_s": ta - t0,
        "steady_ips": steady,
        "end_to_end_ips": report["counts"]["input_rows"] / wall,
        "peak_driver_mb": mon.driver / 2**20,
        "peak_worker_mb": mon.worker / 2**20,
        "peak_workers_total_mb": mon.total / 2**20,
        "first_chunk_task_s": chunk_s[0],
        "median_chunk_task_s": sorted(chunk_s)[len(chunk_s) // 2],
    }


def run_img2dataset(url_parquet: Path, out: Path, n_proc: int, threads: int = 32) -> dict:
    venv = WORK / "i2d-venv"
    py = venv / "bin" / "python"
    if not py.exists():
        env = {**os.environ, "UV_SYSTEM_CERTS": "1"}
        subprocess.run(["uv", "venv", "-q", "--python", "3.11", str(venv)], check=True, env=env)
        subprocess.run(
            [
                "uv",
                "pip",
                "install",
                "-q",
                "--compile-bytecode",
                "--python",
                str(py),
                "img2dataset",
            ],
            check=True,
            env=env,
        )
    subprocess.run(["rm", "-rf", str(out)], check=True)
    code = f"""
import time, json
from img2dataset import download
t0 = time.time()
download(url_list={str(url_parquet)!r}, input_format="parquet", url_col="url", caption_col="caption",
         output_folder={str(out)!r}, output_format="webdataset", processes_count={n_proc}, thread_count={threads},
         image_size={SIZE}, resize_mode="keep_ratio", encode_quality={QUALITY}, number_sample_per_shard=1000,
         distributor="multiprocessing", enable_wandb=False, timeout=10, retries=0)
print(json.dumps({{"wall": time.time() - t0}}))
"""
    t0 = time.perf_counter()
    res = subprocess.run([str(py), "-c", code], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    stats = [json.loads(p.read_text()) for p in out.glob("*_stats.json")]
    ok = sum(s["successes"] for s in stats)
    start = min(s["start_time"] for s in stats)
    end = max(s["end_time"] for s in stats)
    return {
        "written": ok,
        "wall_s": wall,
        "steady_ips": ok / (end - start),
        "end_to_end_ips": ok / wall,
    }


def bare_in_subprocess(manifest: Path, limit: int, allocator: bool) -> dict[str, float]:
    """The bare loop in a fresh process: glibc reads the allocator settings only at start."""
    from pipeline.session import ALLOCATOR_ENV

    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV}
    if allocator:
        env.update(ALLOCATOR_ENV)
    out = subprocess.run(
        [sys.executable, __file__, "--bare-only", str(manifest), "--bare-n", str(limit)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def local_figures(manifest: Path, bare_n: int, n_cores: int) -> dict:
    bare_plain = bare_in_subprocess(manifest, bare_n, allocator=False)["ips"]
    bare = bare_in_subprocess(manifest, bare_n, allocator=True)["ips"]
    print(
        f"bare loop: {bare_plain:.0f} img/s on 1 core (glibc defaults), {bare:.0f} img/s with ALLOCATOR_ENV"
    )
    bare = max(bare, bare_plain)  # compare against the faster of the two
    print(f"  -> ideal {bare * n_cores:.0f} img/s on {n_cores} cores")
    mm = run_mmpipe(manifest, WORK / "out-mmpipe", n_cores)
    print(f"mmpipe build (local files): {json.dumps({k: round(v, 2) for k, v in mm.items()})}")
    print(
        f"  steady-state ratio vs bare x cores: {mm['steady_ips'] / (bare * n_cores):.2f} (goal >= 0.85)"
    )
    return {"bare_ips_1core": bare, "bare_ips_1core_glibc_default": bare_plain, "mmpipe_local": mm}


NGINX_CONF = """worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  sendfile on;
  keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
"""


@contextlib.contextmanager
def serving(root: Path, host: str, port: int):
    """``loopback``: nginx with one worker (Debian's), whose CPU per request hardly counts; a
    number: tests/http_host.py answering after that many ms (a far host). Yields the base URL
    and the server's process, whose CPU (children included) is not the tools' own."""
    import shutil
    import tempfile

    import psutil

    tmp = tempfile.mkdtemp(prefix="bench-host-")
    if host == "loopback":
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(nginx).exists():
            raise SystemExit("nginx is needed for the loopback host: apt-get install nginx-light")
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, root=root))
        cmd = [nginx, "-c", str(conf), "-e", f"{tmp}/error.log"]
    else:
        cmd = [sys.executable, "-m", "tests.http_host", "--root", str(root), "--port", str(port)]
        cmd += ["--latency-ms", host]
    server = subprocess.Popen(
        cmd,
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        for _ in range(100):  # bounded: 10 s
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", psutil.Process(server.pid)
    finally:
        server.terminate()  # nginx: fast shutdown of the master and its worker
        server.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


class CpuMeter:
    """CPU seconds of the whole machine during a run (busy time: not idle, iowait or steal)
    less the server's own (its process and children): what the tool under test spent."""

    def __init__(self, server: object) -> None:
        self.server = server

    @staticmethod
    def _machine() -> float:
        import psutil

        t = psutil.cpu_times()
        return t.user + t.nice + t.system + t.irq + t.softirq

    def _server(self) -> float:
        procs = [self.server, *self.server.children(recursive=True)]  # type: ignore[attr-defined]
        return sum(sum(p.cpu_times()[:4]) for p in procs)

    def __enter__(self) -> CpuMeter:
        self.m0, self.s0 = self._machine(), self._server()
        return self

    def __exit__(self, *exc: object) -> None:
        self.machine = self._machine() - self.m0
        self.server_s = self._server() - self.s0
        self.own = self.machine - self.server_s


def run_mmpipe_cli(manifest: Path, out: Path, server: object) -> dict:
    """``mmpipe build`` as a user runs it, with the task's image settings in a YAML file and
    nothing else: wall from the command's start, when each chunk landed, CPU per image."""
    import yaml

    subprocess.run(["rm", "-rf", str(out)], check=True)
    cfg = out.parent / "bench-build.yaml"
    task = {"resize": SIZE, "resize_mode": "keep_ratio", "image_format": "jpg"}
    # allow_hosts: the bench's hosts serve from 127.0.0.1, which data URLs reach only if opened.
    task.update(image_quality=QUALITY, allow_hosts=["127.0.0.1"])
    cfg.write_text(yaml.safe_dump({"build": task}))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [str(Path(sys.executable).parent / "mmpipe"), "build", str(manifest), "-o", str(out)]
    landed: list[float] = []
    with CpuMeter(server) as meter:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [*cmd, "--config", str(cfg)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        seen: set[str] = set()
        while proc.poll() is None:  # a chunk has landed when its metadata file is written
            for p in (out / "_work" / "chunks").glob("*.parquet"):
                if p.name not in seen:
                    seen.add(p.name)
                    landed.append(time.perf_counter() - t0)
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(err[-2000:])
    report = json.loads((out / "build.json").read_text())
    rows = report["counts"]["input_rows"]
    per = rows / max(1, len(landed))
    steady = per * (len(landed) - 1) / (landed[-1] - landed[0]) if len(landed) > 1 else float("nan")
    return {
        "rows": rows,
        "written": report["counts"]["written"],
        "wall_s": wall,
        "first_chunk_s": landed[0] if landed else float("nan"),
        "startup_s": report["timings_s"]["startup"],
        "steady_ips": steady,
        "cpu_ms_per_image": 1000 * meter.own / rows,
        "server_cpu_ms_per_image": 1000 * meter.server_s / rows,
    }


def peak_in_flight(base: str, host: str) -> int | None:
    """Requests the host saw at once (tests/http_host.py counts them; nginx does not)."""
    if host == "loopback":
        return None
    with urllib.request.urlopen(f"{base}/_stats", timeout=10) as r:
        return int(json.loads(r.read())["peak_in_flight"])


# img2dataset's thread sweep per host (its default is 256); its best run is compared.
I2D_THREADS = {"loopback": [4, 16], "80": [64, 256], "200": [128, 256]}


def compare_http(corpus: Path, n_cores: int, runs: list[str], args) -> dict:
    """Per ``host:n`` run: the bare image work, img2dataset at its best thread count, then
    mmpipe at its defaults, each tool's own CPU per image measured the same way."""
    out: dict = {}
    # The least of three: one short run on a shared machine can read 40% high.
    bares = [
        bare_in_subprocess(corpus / f"manifest-{args.n}.jsonl", args.bare_n, allocator=True)
        for _ in range(3)
    ]
    bare = min(bares, key=lambda b: b["cpu_ms"])
    each = ", ".join(f"{b['cpu_ms']:.2f}" for b in bares)
    print(
        f"bare image work (decode, resize, encode, tar): {bare['cpu_ms']:.2f} ms/image CPU "
        f"(least of {each})"
    )
    out["bare_cpu_ms_per_image"] = bare["cpu_ms"]
    for k, spec in enumerate(runs):
        host, n = spec.split(":")
        n_rows = int(n)
        row: dict = {}
        port = 8765 + k
        if not args.skip_img2dataset:
            sweep = {}
            for t in args.i2d_threads or I2D_THREADS.get(host, [64, 256]):
                with serving(corpus, host, port) as (base, server):
                    pq_urls, _ = url_list(corpus, n_rows, base)
                    with CpuMeter(server) as meter:
                        sweep[t] = run_img2dataset(pq_urls, WORK / "out-i2d", n_cores, t)
                sweep[t]["cpu_ms_per_image"] = 1000 * meter.own / n_rows
                sweep[t]["server_cpu_ms_per_image"] = 1000 * meter.server_s / n_rows
                print(f"[{spec}] img2dataset threads={t}: {_fmt(sweep[t])}", flush=True)
            best = min(sweep, key=lambda t: sweep[t]["wall_s"])
            row["img2dataset"] = {**sweep[best], "thread_count": best, "sweep": sweep}
        with serving(corpus, host, port) as (base, server):  # a fresh server: its peak is ours
            _, js_urls = url_list(corpus, n_rows, base)
            mm = run_mmpipe_cli(js_urls, WORK / "out-mmpipe-http", server)
            mm["host_peak_in_flight"] = peak_in_flight(base, host)
        print(f"[{spec}] mmpipe defaults: {_fmt(mm)}", flush=True)
        row["mmpipe defaults"] = mm
        line = (
            f"[{spec}] mmpipe {mm['wall_s']:.1f} s, first chunk at {mm['first_chunk_s']:.1f} s, "
            f"own CPU {mm['cpu_ms_per_image']:.2f} ms/image = "
            f"{mm['cpu_ms_per_image'] / bare['cpu_ms']:.2f}x the bare image work"
        )
        if "img2dataset" in row:
            i2d = row["img2dataset"]
            line += (
                f"; img2dataset {i2d['wall_s']:.1f} s ({i2d['thread_count']} threads), "
                f"own CPU {i2d['cpu_ms_per_image']:.2f} ms/image; wall ratio "
                f"{i2d['wall_s'] / mm['wall_s']:.2f}x"
            )
        print(line, flush=True)
        out[spec] = row
    return out


def _fmt(r: dict) -> str:
    return json.dumps({k: round(v, 2) for k, v in r.items() if isinstance(v, (int, float))})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bare-only", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--bare-n", type=int, default=1500)
    ap.add_argument("--skip-img2dataset", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-local", action="store_true")
    ap.add_argument(
        "--runs",
        nargs="*",
        default=["loopback:10000", "loopback:30000", "80:4000"],
        help="HOST:IMAGES per HTTP comparison; HOST is loopback (nginx) or a latency in ms",
    )
    ap.add_argument("--i2d-threads", type=int, nargs="+", help="img2dataset's sweep, every host")
    ap.add_argument(
        "--tuned", type=int, nargs="*", default=[], help="also run these fetch ceilings"
    )
    args = ap.parse_args()
    if args.bare_only:
        print(json.dumps(bare_loop(Path(args.bare_only), args.bare_n)))
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    n_cores = cores()
    corpus = WORK / "jpeg-corpus"
    t0 = time.perf_counter()
    largest = max([args.n] + [int(r.split(":")[1]) for r in args.runs])
    make_jpeg_corpus(corpus, largest)  # the images are cached; each size has its manifest
    manifest = make_jpeg_corpus(corpus, args.n)
    print(
        f"corpus: {largest} JPEGs 640x480 ready in {time.perf_counter() - t0:.0f}s; cores {n_cores}"
    )

    results: dict = {"cores": n_cores}
    if args.skip_local:
        args.skip_memory = True
    else:
        results.update(local_figures(manifest, args.bare_n, n_cores))
    if not args.skip_memory:
        half = make_jpeg_corpus(corpus, args.n // 2)
        mh = run_mmpipe(half, WORK / "out-half", n_cores)
        results["mmpipe_half"] = mh
        for n, r in ((args.n // 2, mh), (args.n, results["mmpipe_local"])):
            print(
                f"memory at {n} rows: driver {r['peak_driver_mb']:.0f} MB, largest worker {r['peak_worker_mb']:.0f} MB"
            )
    if args.runs:
        results["http"] = compare_http(corpus, n_cores, args.runs, args)
    (WORK / "bench_build.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
