"""Prompts to digits (generator.text) with the real offline encoder and the bundled head."""

import pytest

pytest.importorskip("sentence_transformers")

from ddpm_guard.generator.errors import GuardError  # noqa: E402
from ddpm_guard.generator.text import WORDS, load_prompt_model, train_captions  # noqa: E402


@pytest.fixture(scope="module")
def pm():
    return load_prompt_model()


def test_digit_prompts_map_to_their_digit_with_both_mappers(pm):
    prompts = [f"a handwritten {w}" for w in WORDS] + [f"the number {d}" for d in range(10)]
    for mapper in ("head", "nearest"):
        got = [m.label for m in pm.match(prompts, mapper)]
        assert got == list(range(10)) * 2, mapper


def test_off_topic_and_empty_prompts_are_refused_with_what_it_can_draw(pm):
    for p in ("a photo of a cat", "an astronaut riding a horse on mars"):
        with pytest.raises(GuardError, match="draws only handwritten digits"):
            pm.label_for(p)
    with pytest.raises(GuardError, match="empty"):
        pm.label_for("   ")
    with pytest.raises(GuardError, match="500 characters"):
        pm.label_for("seven " * 100)


def test_training_captions_cover_every_digit_and_an_off_topic_class():
    caps, labels = train_captions()
    assert set(labels) == set(range(11))
    assert min(labels.count(d) for d in range(10)) >= 20 and labels.count(10) >= 20
    assert "a photo of a cat" not in caps  # the held-out refusal example above is not a training caption
