"""What every job entrypoint shares: one-line errors for user mistakes and the exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable

from pipeline.errors import UserError


def guarded(prog: str, run: Callable[[], object]) -> int:
    """Run the job; a UserError becomes one line on stderr and exit code 2."""
    try:
        run()
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return 0
