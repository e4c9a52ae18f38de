"""Which classes mark rows whose modalities show the same thing, found from the training features.

A contrastive loss pulls each row's modalities together. Where the label says whether they
match (``same`` / ``different``), pulling a picture of a 3 towards a spoken 7 teaches the
shared space the opposite of the relation the classifier must read. So before training, each
class's pairs are tested: a CCA fitted on half of the class's rows, and on the other half the
cosine of each row's own pair against that of shuffled pairs. A class whose rows pair related
items scores high; a class whose rows pair unrelated ones, or whose modalities relate only
through the class itself (one digit, seen and heard: nothing within the class to match), scores
near 0. Only when some classes score high and the others clearly low is the contrastive loss limited to
the former; otherwise every row counts, as before (docs/train.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np

from pipeline.train.baselines import collect
from pipeline.train.cca import cca_arrays, cosine, fit_cca

MAX_ROWS = 4000  # training rows kept for the test (a decision, not a fit): the driver's bound
MAX_READ = 100_000  # rows read at most to find each class's share of MAX_ROWS
MIN_HALF = 20  # rows each half of a class needs for its score to count
# A class scoring at least RELATED pairs related items, one under UNRELATED unrelated ones.
# Measured (docs/benchmarks.md): `same` of three association corpora 0.29-0.57, `different`
# at most 0.02; on corpora whose modalities each carry the label, at most 0.115 per class,
# or 0.39-0.54 for every class where every class relates (shapes: colour in picture and
# caption), which is no relation either.
RELATED = 0.2
UNRELATED = 0.1


@dataclass(frozen=True)
class Relations:
    """What training needs to relate modalities: the matching classes (names and indices),
    the pairs whose agreement the label depends on, and each pair's canonical space."""

    classes: list[str]
    class_ids: list[int]
    scores: dict[str, float]  # per class, the best held-out gap over pairs (for the report)
    fits: dict[str, tuple[Any, ...]]  # "a~b" -> (mean_a, proj_a, mean_b, proj_b, shift, inv_std)

    @property
    def pairs(self) -> tuple[str, ...]:
        return tuple(self.fits)

    def summary(self) -> dict[str, Any]:
        return {"matching": self.classes, "pairs": list(self.pairs), "scores": self.scores}


def balanced(
    batches: Iterator[tuple[Any, ...]], n_classes: int, cap: int
) -> Iterator[tuple[Any, ...]]:
    """The batches cut to at most ``cap`` labelled rows of each class, ending once every
    class has them or after MAX_READ rows: a corpus sorted by label still shows each class."""
    import torch

    seen, read = np.zeros(n_classes, np.int64), 0
    for keys, metas, feats, masks, labels in batches:
        keep = []
        for i, c in enumerate(labels.tolist()):
            if c >= 0 and seen[c] < cap:
                seen[c] += 1
                keep.append(i)
        read += len(keys)
        if keep:
            idx = torch.tensor(keep)
            yield (
                [keys[i] for i in keep],
                [metas[i] for i in keep],
                {m: v[idx] for m, v in feats.items()},
                {m: v[idx] for m, v in masks.items()},
                labels[idx],
            )
        if (seen >= cap).all() or read >= MAX_READ:
            return


def gaps(rows: dict[str, Any], n_classes: int) -> dict[tuple[int, str], float]:
    """Per (class, pair of modalities): the held-out gap in CCA cosine between the class's
    own pairs and shuffled ones; combinations with too few rows are left out."""
    mods = [k[2:] for k in rows if k.startswith("x_")]
    out: dict[tuple[int, str], float] = {}
    for c in range(n_classes):
        for a, b in combinations(mods, 2):
            sel = np.flatnonzero((rows["labels"] == c) & rows[f"has_{a}"] & rows[f"has_{b}"])
            fit, held = sel[0::2], sel[1::2]
            if len(held) < MIN_HALF:
                continue
            project = fit_cca(rows[f"x_{a}"][fit], rows[f"x_{b}"][fit])
            u, v = project(rows[f"x_{a}"][held], rows[f"x_{b}"][held])
            shuffled = np.roll(np.arange(len(held)), len(held) // 2)  # no row meets its own
            out[(c, f"{a}~{b}")] = float(cosine(u, v).mean() - cosine(u, v[shuffled]).mean())
    return out


def find_relations(train: Iterator[tuple[Any, ...]], classes: list[str]) -> Relations | None:
    """The relations the labels mark, or None when they mark none (every row then counts as
    a matching pair, and the model is as it was before relations)."""
    if len(classes) < 2:
        return None
    cap = MAX_ROWS // len(classes)
    rows = collect(balanced(train, len(classes), cap), MAX_ROWS, labelled_only=True)
    if not rows:
        return None
    per = gaps(rows, len(classes))
    score = {c: max(g for (k, _), g in per.items() if k == c) for c, _ in per}
    if len(score) < len(classes):  # a class untested: no verdict on it, so none at all
        return None
    ids = sorted(c for c, s in score.items() if s >= RELATED)
    # Only a clear split says which rows match: every other class well under the bar.
    if (
        not ids
        or len(ids) == len(classes)
        or any(s >= UNRELATED for c, s in score.items() if c not in ids)
    ):
        return None
    pairs = sorted({p for (_, p) in per})
    related = [p for p in pairs if np.mean([per.get((c, p), 0.0) for c in ids]) >= RELATED]
    matching = np.isin(rows["labels"], ids)
    fits: dict[str, tuple[Any, ...]] = {}
    for p in related:
        a, b = p.split("~")
        both = rows[f"has_{a}"] & rows[f"has_{b}"]
        mx, pa, my, pb = cca_arrays(
            rows[f"x_{a}"][both & matching], rows[f"x_{b}"][both & matching]
        )
        cos = cosine((rows[f"x_{a}"][both] - mx) @ pa, (rows[f"x_{b}"][both] - my) @ pb)
        fits[p] = (mx, pa, my, pb, float(cos.mean()), 1.0 / max(float(cos.std()), 1e-6))
    return Relations(
        classes=[classes[c] for c in ids],
        class_ids=ids,
        scores={classes[c]: round(s, 4) for c, s in score.items()},
        fits=fits,
    )
