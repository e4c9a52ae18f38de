"""A file server for tests and benchmarks: fixed latency, 503s and truncated bodies on request.

    python -m tests.http_host --root DIR --port N [--latency-ms 80] [--fail 0.1] [--truncate 0.05]
        [--bind 127.0.0.2]

One asyncio process, so a thousand requests can wait on it at once. Faults are drawn per
request with a seeded generator. ``GET /_stats`` returns what it served, as JSON;
``GET /_redirect?to=URL`` answers 302 to URL (counted as "302").
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections import Counter
from pathlib import Path

from aiohttp import web


def make_app(
    root: Path, latency_ms: float, fail: float, truncate: float, seed: int = 0
) -> web.Application:
    rng = random.Random(seed)
    stats: Counter[str] = Counter()
    in_flight = [0, 0]  # now, peak

    async def stats_view(_request: web.Request) -> web.Response:
        return web.json_response({**stats, "peak_in_flight": in_flight[1]})

    async def serve(request: web.Request) -> web.StreamResponse:
        in_flight[0] += 1
        in_flight[1] = max(in_flight[1], in_flight[0])
        try:
            if latency_ms:
                await asyncio.sleep(latency_ms / 1000)
            path = (root / request.match_info["path"]).resolve()
            if root not in path.parents or not path.is_file():
                stats["404"] += 1
                return web.Response(status=404)
            draw = rng.random()
            if draw < fail:
                stats["503"] += 1
                return web.Response(status=503)
            data = path.read_bytes()
            if draw < fail + truncate:
                stats["truncated"] += 1
                # The full length is promised and half is sent: the client must notice.
                resp = web.StreamResponse(headers={"Content-Length": str(len(data))})
                await resp.prepare(request)
                await resp.write(data[: len(data) // 2])
                assert request.transport is not None
                request.transport.close()
                return resp
            stats["200"] += 1
            return web.Response(body=data, content_type="application/octet-stream")
        finally:
            in_flight[0] -= 1

    async def redirect_view(request: web.Request) -> web.Response:
        stats["302"] += 1
        raise web.HTTPFound(request.query["to"])

    app = web.Application()
    app.router.add_get("/_stats", stats_view)
    app.router.add_get("/_redirect", redirect_view)
    app.router.add_get("/{path:.+}", serve)
    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--fail", type=float, default=0.0, help="share of requests answered 503")
    ap.add_argument("--truncate", type=float, default=0.0, help="share sent half a body")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bind", default="127.0.0.1", help="a loopback address to listen on")
    args = ap.parse_args()
    app = make_app(Path(args.root).resolve(), args.latency_ms, args.fail, args.truncate, args.seed)
    web.run_app(app, host=args.bind, port=args.port, print=None, backlog=2048)


if __name__ == "__main__":
    main()
