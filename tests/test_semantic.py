"""SemanticConsistencyScorer with the bundled all-MiniLM-L6-v2: formula, intent choice, sanity, offline errors."""

from __future__ import annotations

import pytest
import torch

from promptgym.rewards.base import EditResult, EditTask
from promptgym.rewards.semantic import SemanticConsistencyScorer, bundled_minilm_path, intent_text

RESULTS = [
    EditResult(EditTask("a cat sleeping on a sofa", "make it night time"), "a cat sleeping on a sofa at night"),
    EditResult(EditTask("a red car in the snow", "make it a painting"), "quarterly tax spreadsheet, rows of numbers"),
    EditResult(EditTask("a forest", "add a river", target="a forest with a river"), "a forest with a river, oil painting"),
]


@pytest.fixture(scope="module")
def scorer():
    return SemanticConsistencyScorer.from_pretrained()


def test_bundled_model_is_real_minilm():
    path = bundled_minilm_path()
    assert (path / "model.safetensors").is_file() and (path / "modules.json").is_file()


def test_intent_is_target_when_given_else_source_plus_instruction():
    assert intent_text(RESULTS[0].task) == "a cat sleeping on a sofa make it night time"
    assert intent_text(RESULTS[2].task) == "a forest with a river"
    assert intent_text(EditTask("a forest", "add a river", target="")) == "a forest add a river"


def test_scores_equal_cosine_of_independent_embeddings(scorer):
    intents = [intent_text(result.task) for result in RESULTS]
    prompts = [result.prompt for result in RESULTS]
    with torch.no_grad():
        a = scorer.model.encode(intents, convert_to_tensor=True, normalize_embeddings=False)
        b = scorer.model.encode(prompts, convert_to_tensor=True, normalize_embeddings=False)
    expected = torch.nn.functional.cosine_similarity(a, b, dim=-1).cpu()
    scores = scorer(RESULTS)
    assert scores.dtype == torch.float32 and scores.device.type == "cpu" and scores.shape == (3,)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)


def test_real_model_ranks_faithful_edits_above_unrelated_text(scorer):
    scores = scorer(RESULTS)
    assert scores[0] > 0.6 and scores[2] > 0.6
    assert scores[1] < 0.3
    identical = scorer.score_texts(["a cat on a sofa"], ["a cat on a sofa"])
    torch.testing.assert_close(identical, torch.ones(1), atol=1e-5, rtol=0)


def test_empty_and_mismatched_inputs(scorer):
    assert scorer([]).shape == (0,)
    with pytest.raises(ValueError, match="same length"):
        scorer.score_texts(["a"], ["a", "b"])
    with pytest.raises(TypeError, match="intents"):
        scorer.score_texts("a cat", "a cat")


def test_missing_model_offline_names_it():
    with pytest.raises(OSError, match="huggingface-cli download sentence-transformers/not-a-real-model-xyz"):
        SemanticConsistencyScorer.from_pretrained("sentence-transformers/not-a-real-model-xyz")
