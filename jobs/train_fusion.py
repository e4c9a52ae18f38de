"""Job entrypoint for ``train``: train from a YAML config, then evaluate the run (``--no-eval`` skips it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jobs.common import job_main


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.train_fusion --config jobs/configs/train.yaml [--address ADDR]`` [--resume]."""
    return job_main("train", argv, prog="train_fusion", after=_evaluate)


def _evaluate(cfg: Any, args: Any) -> None:
    """The run beside its baselines on the validation split (``mmpipe eval``)."""
    from pipeline.train.evaluate import run_eval

    if not args.no_eval:
        run_eval(cfg.output, cfg.data)


if __name__ == "__main__":
    raise SystemExit(main())
