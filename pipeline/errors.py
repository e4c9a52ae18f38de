"""User-facing errors and the documented set of reject reason codes."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum


class UserError(Exception):
    """A mistake the user can fix (bad option, missing input): printed as one line, no traceback."""


class Reason(str, Enum):
    """Why an input row was rejected. The values are stable: they are written to rejects.parquet."""

    MISSING = "missing"
    FETCH_ERROR = "fetch_error"
    DISALLOWED_REF = "disallowed_ref"
    BLOCKED_ADDRESS = "blocked_address"
    MALFORMED_ROW = "malformed_row"
    DECODE_ERROR = "decode_error"
    TOO_LARGE = "too_large"
    TOO_SMALL = "too_small"
    TOO_LONG = "too_long"
    TIMEOUT = "timeout"
    UNSAFE_MEMBER = "unsafe_member"
    NO_MODALITY = "no_modality"
    DUPLICATE = "duplicate"
    DUPLICATE_KEY = "duplicate_key"
    NEAR_DUPLICATE = "near_duplicate"
    # mmpipe curate: one reason per filter; the message carries the value and the threshold.
    SMALL_IMAGE = "small_image"
    ASPECT_RATIO = "aspect_ratio"
    CAPTION_LENGTH = "caption_length"
    LANGUAGE = "language"
    LOW_SIMILARITY = "low_similarity"
    AUDIO_DURATION = "audio_duration"
    SILENCE = "silence"
    LOW_SNR = "low_snr"
    PREDICATE = "predicate"
    SEMANTIC_DUPLICATE = "semantic_duplicate"


REASON_DOCS: dict[Reason, str] = {
    Reason.MISSING: "a referenced file or URL does not exist",
    Reason.FETCH_ERROR: "a reference exists but could not be read (permissions, network, HTTP error)",
    Reason.DISALLOWED_REF: "a reference uses a scheme or location that this input may not reach",
    Reason.BLOCKED_ADDRESS: "an http(s) reference (or a redirect) reaches a loopback, private, "
    "link-local, metadata or other non-public address; build.allow_hosts opens one",
    Reason.MALFORMED_ROW: "the input row itself cannot be parsed or has values of the wrong type",
    Reason.DECODE_ERROR: "bytes do not decode as their modality (corrupt, truncated, not UTF-8, NUL)",
    Reason.TOO_LARGE: "over a size limit: file bytes, image side, or pixel count (bomb guard)",
    Reason.TOO_SMALL: "under a size limit: image side or audio duration",
    Reason.TOO_LONG: "audio duration or text length over its limit",
    Reason.TIMEOUT: "decoding the sample took longer than the per-sample time limit",
    Reason.UNSAFE_MEMBER: "a tar member that is not a regular file (symlink, hardlink, device)",
    Reason.NO_MODALITY: "the row holds no image, audio or text",
    Reason.DUPLICATE: "the same content (hash) was already written from an earlier row",
    Reason.DUPLICATE_KEY: "the same key was already written from an earlier row",
    Reason.NEAR_DUPLICATE: "an earlier image's perceptual hash is within near_dup_distance bits",
    Reason.SMALL_IMAGE: "curate: the image's shorter side is under image.min_side",
    Reason.ASPECT_RATIO: "curate: the image's long/short side ratio is over image.max_aspect",
    Reason.CAPTION_LENGTH: "curate: the caption's word or character count is out of its bounds",
    Reason.LANGUAGE: "curate: the caption's identified language is not one of caption.languages",
    Reason.LOW_SIMILARITY: "curate: image-text similarity under the threshold (or its top fraction)",
    Reason.AUDIO_DURATION: "curate: the audio is shorter or longer than audio.min/max_seconds",
    Reason.SILENCE: "curate: the audio's silent fraction is over audio.max_silent_fraction",
    Reason.LOW_SNR: "curate: the audio's estimated SNR is under audio.min_snr_db",
    Reason.PREDICATE: "curate: the user predicate (module:function) returned keep = false",
    Reason.SEMANTIC_DUPLICATE: "curate: an earlier kept sample's embedding is within 1 - eps cosine",
}


class SampleError(Exception):
    """A per-sample failure that becomes a reject row; never escapes a stage.

    Raised where the problem is found (a decoder that cannot read the bytes), never made
    from an arbitrary exception further on: anything else is a bug, or the machine (out of
    memory), and fails the task, so that no sample is rejected for our own mistake.
    """

    def __init__(self, reason: Reason, message: str, modality: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.modality = modality


ON_ERROR = ("reject", "raise")  # the named policies of a sample's error
_raising = [0]  # > 0 while a stage of an ``on_error: raise`` job runs in this process


@contextlib.contextmanager
def sample_policy(on_error: str) -> Iterator[None]:
    """While a stage runs: under ``raise`` a sample's error fails the task instead of becoming
    its reject (tests, debugging a corpus). Nested stages keep the stricter policy."""
    strict = on_error == "raise"
    _raising[0] += strict
    try:
        yield
    finally:
        _raising[0] -= strict


class SampleErrorRaised(RuntimeError):
    """A sample's error under ``on_error: raise``: it fails the job as a bug would."""


def rejecting(e: SampleError) -> SampleError:
    """Called where a sample's error is caught to become its reject row; under
    ``on_error: raise`` it fails the task instead.

    Raises:
        SampleErrorRaised: the policy in force is ``raise``.
    """
    if _raising[0]:
        # The message carries the reason; the chain would only repeat it.
        raise SampleErrorRaised(
            f"on_error is raise: {e.modality or 'sample'}: {e.message}"
        ) from None
    return e


def is_storage_error(e: BaseException) -> bool:
    """An I/O failure of a filesystem or object store (after its retries), not a bug."""
    if isinstance(e, OSError):
        return True
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return False
    return isinstance(e, (BotoCoreError, ClientError))


def storage_message(e: BaseException) -> str:
    """One line: the error's type, first line and path, without a remote traceback."""
    text = str(e).strip().splitlines()
    # A RayTaskError's text starts with the task's name; the cause's line is the last one.
    line = text[-1] if text else ""
    path = getattr(e, "filename", None)
    if path and str(path) not in line:
        line = f"{line}: {path}"
    return f"{type(e).__name__}: {line}"[:500]


# Local mistakes that a rerun cannot fix, and what does.
_PATH_ADVICE = {
    FileNotFoundError: "check the path",
    NotADirectoryError: "a folder was expected there; check the path",
    IsADirectoryError: "a file was expected there; check the path",
    PermissionError: "check the permissions, or choose another path",
    FileExistsError: "remove it or choose another path",
}


def storage_line(e: BaseException) -> str:
    """The console line for a storage failure, with advice that fits its kind."""
    for kind, advice in _PATH_ADVICE.items():
        if isinstance(e, kind):
            return f"{storage_message(e)}; {advice}"
    return f"storage: {storage_message(e)}; rerun to resume once the store answers"


def decode_failure(modality: str, e: Exception) -> SampleError:
    """A decoder's own exception, as the sample's ``decode_error``; MemoryError is the
    machine's, not the sample's, and is re-raised."""
    if isinstance(e, MemoryError):
        raise e
    # The message as features' rejects have always carried it.
    return SampleError(
        Reason.DECODE_ERROR, f"decode_error: {type(e).__name__}: {e}"[:300], modality
    )


@dataclass(frozen=True)
class Reject:
    """A row that a model stage could not use: which stage, which documented reason, and why.

    It travels between stages as one JSON string per row (the ``error`` column), empty for
    rows that are fine, so that Arrow and numpy batches carry it like any other column.
    """

    stage: str
    reason: Reason
    message: str

    def to_json(self) -> str:
        return json.dumps([self.stage, self.reason.value, self.message])

    @classmethod
    def from_json(cls, text: str) -> Reject:
        stage, reason, message = json.loads(text)
        return cls(stage, Reason(reason), message)
