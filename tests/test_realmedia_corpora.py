"""The real-media bench corpora keep their design: captions true, never naming the class."""

from __future__ import annotations

import numpy as np
import pytest

from bench.realmedia_corpora import (
    PHOTO_PHRASES,
    PHOTOS,
    TEXTURE_PHRASES,
    TEXTURES,
    scene_caption,
)

TABLES = {
    "photos": (PHOTOS, PHOTO_PHRASES, ("en", "cmn")),
    "textures": (TEXTURES, TEXTURE_PHRASES, ("en", "cmn", "es")),
}


@pytest.mark.parametrize("corpus", sorted(TABLES))
def test_captions_are_true_and_never_name_the_class(corpus: str) -> None:
    table, phrases, langs = TABLES[corpus]
    rng = np.random.default_rng(0)
    for label, scene in table.items():
        assert all(scene.names[lang] for lang in langs), f"{label} has no name in {langs}"
        assert scene.attrs <= set(phrases), f"{label}: attributes without a phrase"
        for _ in range(20):
            text = scene_caption(scene.attrs, phrases, rng)
            assert not any(n.lower() in text.lower() for n in scene.names.values() if n), text
            # each statement is the one that holds for this class
            for a, (yes, no) in phrases.items():
                assert (no if a in scene.attrs else yes) not in text.removeprefix(
                    "a photo that "
                ).split(" and "), text


def test_association_corpora_pair_the_same_thing_exactly_when_labelled_same(tmp_path) -> None:
    import json

    from sklearn.datasets import load_digits

    from bench.association_corpora import write_digits_caption
    from bench.bench_audio import WORDS

    rows = [json.loads(x) for x in write_digits_caption(tmp_path, 0).read_text().splitlines()]
    digits = load_digits().target
    assert len(rows) == len(digits) and all((tmp_path / r["image"]).exists() for r in rows)
    same = [r["label"] == "same" for r in rows]
    assert 0.45 < np.mean(same) < 0.55  # neither label is a prior a model could lean on
    for r, d, s in zip(rows, digits, same):
        named = [i for i, w in enumerate(WORDS["en"]) if r["text"].endswith(" " + w)]
        assert len(named) == 1 and (named[0] == d) == s, r
