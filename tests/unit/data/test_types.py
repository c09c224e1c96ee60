"""The data layer's shared types and checks (orchestrator.data.types): an example's texts, a task's
label words and the text columns it goes by outside the pipeline."""

from __future__ import annotations

import pytest
from helpers.data_checks import the_error

from orchestrator.data import Example, text_columns
from orchestrator.spec.schema import TaskSpec


def test_example_rejects_a_bare_string():
    with pytest.raises(TypeError):
        Example("a bare string", 0)  # type: ignore[arg-type]


@pytest.mark.parametrize("words, problem", [
    ({"negative": "bad"}, "has no word"),
    ({"negative": "Bad", "positive": "good"}, "one lowercase word"),
    ({"negative": "not good", "positive": "good"}, "one lowercase word"),
    ({"negative": "same", "positive": "same"}, "share the word"),
    ({"negative": "bad", "positive": "good", "neutral": "meh"}, "not labels"),
])
def test_bad_label_words(words, problem):
    err = the_error(TaskSpec(name="sentiment", label_words=words))
    assert any(problem in i.message and i.field == "tasks.sentiment.label_words" for i in err.issues)


def test_text_columns_of_a_task():
    assert text_columns(TaskSpec(name="topic_match"), pair=True) == ["text", "text_pair"]
    assert text_columns(TaskSpec(name="sentiment"), pair=False) == ["text"]
    local = TaskSpec(name="rte", kind="local", dataset="/data/rte", text_fields=["premise", "hypothesis"])
    assert text_columns(local, pair=True) == ["premise", "hypothesis"]
