"""The `mmpipe submit` and `mmpipe jobs list|status|logs|stop` subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pipeline.errors import UserError


def add_commands(sub: Any) -> None:
    from pipeline.registry import JOB_NAMES
    from pipeline.submit.client import DEFAULT_ADDRESS

    address_help = (
        f"the dashboard, e.g. http://HEAD:8265 (default: $RAY_ADDRESS, else {DEFAULT_ADDRESS})"
    )

    p = sub.add_parser("submit", help="run a job on a Ray cluster through the Jobs API")
    p.add_argument("job", help="|".join(JOB_NAMES))
    p.add_argument("--config", required=True, help="the job's YAML (validated before submitting)")
    p.add_argument(
        "--address",
        help=address_help,
    )
    p.add_argument(
        "--deps",
        default="lock",
        choices=["lock", "image", "none"],
        help="lock: install requirements.lock pins; image: --image; none: the cluster's env",
    )
    p.add_argument("--image", help="a prebuilt image (with --deps image)")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for the job (never a credential)",
    )
    p.add_argument("--submission-id", help="default: mmpipe-JOB-CONFIGHASH-UTCTIME")
    p.add_argument("--wait", action="store_true", help="wait for the job; exit with its status")
    p.add_argument("--follow", action="store_true", help="stream its logs until it ends")
    p.add_argument("--timeout", type=float, default=6 * 3600, help="seconds to wait or follow")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("jobs", help="list, inspect, read the logs of, or stop submitted jobs")
    p.add_argument("action", choices=["list", "status", "logs", "stop"])
    p.add_argument("submission_id", nargs="?")
    p.add_argument(
        "--address",
        help=address_help,
    )
    p.set_defaults(func=_cmd_jobs)


def _env(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UserError(f"--env {pair!r}: write NAME=VALUE")
        out[name] = value
    return out


def _cmd_submit(args: argparse.Namespace) -> int:
    from pipeline.submit.client import exit_code, follow, submit, wait

    sid = submit(
        args.job,
        args.config,
        address=args.address,
        deps=args.deps,
        image=args.image,
        env=_env(args.env),
        submission_id=args.submission_id,
    )
    print(f"submitted {sid}", file=sys.stderr)
    if args.follow:
        status = follow(sid, address=args.address, timeout_s=args.timeout)
    elif args.wait:
        status = wait(sid, address=args.address, timeout_s=args.timeout)
    else:
        print(sid)
        return 0
    print(f"{sid}: {status}", file=sys.stderr)
    if status in ("FAILED", "STOPPED"):
        _why(sid, args.address)
    return exit_code(status)


def _why(sid: str, address: str | None) -> None:
    """Say in one line why a job ended without success (Ray's message: a runtime env that failed
    to build, the entrypoint's exit code) and where its whole log is."""
    from pipeline.submit.client import status

    message = (status(sid, address).get("message") or "").strip()
    first = message.splitlines()[0] if message else "no message from the cluster"
    print(f"{sid}: {first}; its log: mmpipe jobs logs {sid}", file=sys.stderr)


def _cmd_jobs(args: argparse.Namespace) -> int:
    from pipeline.submit import client as c

    if args.action == "list":
        for row in c.list_jobs(args.address):
            print(f"{row['submission_id']:<50} {row['status']:<10} {row['job'] or '-'}")
        return 0
    if not args.submission_id:
        raise UserError(f"mmpipe jobs {args.action} needs a SUBMISSION_ID (see mmpipe jobs list)")
    if args.action == "status":
        info = c.status(args.submission_id, args.address)
        print(json.dumps(info, indent=1, default=str))
        return c.exit_code(info["status"]) if info["status"] in c.TERMINAL else 0
    if args.action == "logs":
        sys.stdout.write(c.logs(args.submission_id, args.address))
        return 0
    stopped = c.stop(args.submission_id, args.address)
    print(
        f"{args.submission_id}: {'stop requested' if stopped else 'already ended'}", file=sys.stderr
    )
    return 0
