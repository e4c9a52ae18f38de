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
