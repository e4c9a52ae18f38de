"""What every job does around its stages: claim the output, resume, and commit its marker last.

One protocol for build, curate, features and train (docs/architecture.md, "Lifecycle"):

* the **commit marker** is the job's summary JSON (``build.json``, ``curate.json``,
  ``features.json`` with ``_SUCCESS``, ``train.json``), written last and carrying the run's
  fingerprint: a rerun with that fingerprint returns the summary at once;
* the **claim** (``started``) records the fingerprint of a run in progress; a rerun of the same
  config resumes from what that run committed, a run of another config that committed work
  is refused, and one that committed none is replaced;
* ``--overwrite`` removes the files the job owns there (``owned``), and nothing else.

Embed and refresh commit versions of a store instead (``pipeline/embed/store.py``): their
marker is ``versions/vN/_SUCCESS`` and then ``latest``, and a killed run resumes from
``_staging/``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.errors import UserError
from pipeline.io.fs import check_output, exists, join, read_bytes, remove_tree, write_bytes_atomic
from pipeline.session import probe_address


def prepare(output: str, address: str | None = None) -> None:
    """Before any work: the output is a folder we may write, and Ray answers at ``address``
    (in seconds, where ``ray.init`` would retry for ever).

    Raises:
        UserError: naming the flag and the fix.
    """
    check_output(output)
    if address:
        probe_address(address)


@dataclass(frozen=True)
class Output:
    """One job's output folder, as the lifecycle sees it."""

    job: str  # "build": what lines name
    url: str  # absolute
    fingerprint: str
    marker: str  # the summary JSON, written last
    started: str  # the claim, relative to ``url``
    owned: tuple[str, ...] = ()  # what --overwrite removes (the marker and claim too)
    success: str | None = None  # an empty file after the marker, for tools that look for one
    what: str = "run"  # "build": how lines name one
    unit: tuple[str, str] = ("unit", "units")  # what ``work_done`` counts: singular, plural
    overwritable: bool = True  # the job offers --overwrite (train does not)

    def _fix(self, what: str) -> str:
        """The way out of a refusal, in the job's own options."""
        if self.overwritable:
            return f"pass --overwrite to {what} or choose another --output"
        return "choose another --output, or delete it to start over"

    def _read(self, name: str) -> dict[str, Any] | None:
        url = join(self.url, name)
        try:
            return dict(json.loads(read_bytes(url))) if exists(url) else None
        except (OSError, ValueError) as e:
            raise UserError(
                f"cannot read {url}: {type(e).__name__}: {e}; {self._fix('replace it')}"
            ) from None

    def finished(self, overwrite: bool = False) -> dict[str, Any] | None:
        """The committed summary of this same run, which a rerun returns; reads, never writes.

        Raises:
            UserError: a finished run of another config is there, and no ``overwrite``.
        """
        if overwrite or (self.success and not exists(join(self.url, self.success))):
            return None
        report = self._read(self.marker)
        if report is None:
            return None
        if report.get("fingerprint", report.get("config_fingerprint")) == self.fingerprint:
            return report
        raise UserError(
            f"{self.url} holds a finished {self.what} of a different config; "
            + self._fix("replace it")
        )

    def claim(
        self,
        config: dict[str, Any],
        *,
        overwrite: bool = False,
        work_done: Callable[[], int] = lambda: 0,
        resume: bool | None = None,
        say: Callable[[str], None] | None = None,
    ) -> int:
        """Make the output ours for this run, once the input is known to be good (a failed
        plan leaves nothing); how many units of earlier work the run keeps.

        ``work_done`` counts what an unfinished run committed. ``resume``: None resumes the
        same config by itself; False refuses to (train asks for ``--resume``).

        Raises:
            UserError: unfinished work of another config (or, with ``resume=False``, of this
                one) is there; or the output cannot be written.
        """
        try:
            started = None if overwrite else self._read(self.started)
            # Work with no claim beside it is of an unknown config: resumed only when asked.
            kept = 0 if overwrite else work_done()
            same = started is not None and started.get("fingerprint") == self.fingerprint
            if kept and started is not None and not same:
                raise UserError(
                    f"{self.url} holds an unfinished {self.what} of a different config "
                    f"({kept} {self.unit[1]} done); rerun with the same options to resume, or "
                    + self._fix("discard it")
                )
            if kept and resume is False:
                raise UserError(
                    f"{self.url} holds an unfinished {self.what} ({kept} {self.unit[1]} done); "
                    "pass --resume to continue it, or " + self._fix("discard it")
                )
            if kept and started is None and resume is None:
                raise UserError(
                    f"{self.url} holds {kept} {self.unit[1]} of an unfinished {self.what} "
                    "whose config is not recorded; " + self._fix("discard them")
                )
            if overwrite or not kept:
                for name in (*self.owned, self.marker, self.started, self.success or ""):
                    if name:
                        remove_tree(join(self.url, name))
            if kept and say is not None:
                noun = self.unit[0] if kept == 1 else self.unit[1]
                say(
                    f"resuming the unfinished {self.what} in {self.url}: keeping {kept} {noun}, "
                    "redoing the rest"
                )
            claim = {"fingerprint": self.fingerprint, "config": config}
            write_bytes_atomic(
                join(self.url, self.started),
                json.dumps(claim, sort_keys=True, default=str).encode(),
            )
            return kept
        except UserError:
            raise
        except OSError as e:
            raise UserError(
                f"cannot write to output {self.url}: {type(e).__name__}: {e}; "
                "choose a writable --output"
            ) from None

    def commit(self, report: dict[str, Any], text: str | None = None) -> None:
        """The marker, last (then ``success``): from here the run is finished."""
        data = text if text is not None else json.dumps(report, indent=2, default=str) + "\n"
        write_bytes_atomic(join(self.url, self.marker), data.encode())
        if self.success:
            write_bytes_atomic(join(self.url, self.success), b"")
