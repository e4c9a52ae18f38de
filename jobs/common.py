"""What every job entrypoint shares: one-line errors for user mistakes and the exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable

from pipeline.errors import UserError, is_storage_error, storage_line
from pipeline.redact import redact


def guarded(prog: str, run: Callable[[], object]) -> int:
    """Run the job; a UserError becomes one line on stderr and exit code 2."""
    try:
        run()
    except UserError as e:
        print(f"{prog}: error: {redact(str(e))}", file=sys.stderr)
        return 2
    except Exception as e:
        if not is_storage_error(e):
            raise
        print(f"{prog}: error: {redact(storage_line(e))}", file=sys.stderr)
        return 1
    return 0
