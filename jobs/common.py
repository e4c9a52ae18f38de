"""What every job entrypoint shares: one-line errors for user mistakes and the exit code."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.failure import run_guarded


def guarded(prog: str, run: Callable[[], object]) -> int:
    """Run the job: a UserError is one line and exit 2, a storage failure one line that
    points to its traceback and exit 1 (pipeline/failure.py). MMPIPE_DEBUG=1 shows tracebacks."""
    return run_guarded(prog, run)


def job_main(
    name: str,
    argv: Sequence[str] | None,
    prog: str,
    after: Callable[[Any, Any], None] | None = None,
) -> int:
    """The entrypoint of the registry's job ``name``: ``--config`` (its YAML), ``--address``,
    an override for each of its paths and its flags; one-line errors and the exit code.
    ``after(cfg, args)`` runs once the job succeeded (train's evaluation)."""
    from pipeline.registry import job

    spec = job(name)
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--config", required=True, help=f"YAML file with a {spec.section}: mapping")
    p.add_argument(
        "--address", help="Ray address; default: the cluster this job runs on, else local"
    )
    for path in spec.paths:
        p.add_argument(f"--{path}", help=f"override {spec.section}.{path}")
    for flag in spec.flags:
        p.add_argument(f"--{flag}", action="store_true", help=FLAG_HELP[flag])
    if after is not None:
        p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    args = p.parse_args(argv)

    def run() -> None:
        cfg = spec.load_config(args.config, {k: getattr(args, k) for k in spec.paths})
        spec.run(cfg, address=args.address, **{f: getattr(args, f) for f in spec.flags})
        if after is not None:
            after(cfg, args)

    return guarded(prog, run)


FLAG_HELP = {
    "overwrite": "replace what another config left in the output",
    "resume": "continue from the latest checkpoint",
}
