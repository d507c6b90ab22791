"""`check_scorer` and `check_shaping`: every scorer and the shaping promptgym ships pass; deliberately broken ones
fail with the property (or episode and step) that broke."""

from __future__ import annotations

import math
import re

import gymnasium
import numpy as np
import pytest
import torch

from promptgym.envs import (
    ENV_ID,
    EditTask,
    PromptEditEnv,
    PromptEditVectorEnv,
    ShapingCheckError,
    ShapingCheckWarning,
    check_shaping,
    default_tokenizer,
    load_tasks,
)
from promptgym.rewards import (
    CompositeReward,
    ContentIntegrityScorer,
    CountingReward,
    EditResult,
    PotentialShaping,
    ScorerCheckError,
    ScorerCheckWarning,
    SemanticConsistencyScorer,
    build_reward,
    check_scorer,
)
from promptgym.rewards.gold import GoldAestheticScorer, GoldContentScorer
from promptgym.rewards.scene_render import SceneRenderer
from promptgym.rewards.world import synth_path

WORD = "kitchen"  # in some prompts of the `results` fixture, not in others
ALL_CHECKS = ("type", "dtype", "shape", "finite", "empty_batch", "determinism", "batch_invariance", "no_mutation")


@pytest.fixture(scope="module")
def tiny() -> CompositeReward:
    """The tiny preset with the env's tokenizer, as `PromptEditEnv()` builds it."""
    return build_reward("tiny", tokenizer=default_tokenizer())


@pytest.fixture(scope="module")
def results() -> list[EditResult]:
    """Four demo edits (reference targets, different lengths), the unedited source of the first, and a tie: the
    first edit again."""
    tasks = load_tasks("demo", "train")[:4]
    edits = [EditResult(task, task.target) for task in tasks]
    return [*edits, EditResult(tasks[0], tasks[0].source), edits[0]]


def passes(report, n: int, outputs: tuple[str, ...]) -> None:
    assert report.checks == ALL_CHECKS
    assert report.batch_size == n and report.outputs == outputs
    assert set(report.seconds) == {"empty", "batch", "cached", "recomputed", "singleton", "reversed", "per_item"}
    assert report.warnings == ()


# ------------------------------------------------------------------------------------ every shipped scorer passes


@pytest.mark.parametrize("scorer", [ContentIntegrityScorer(), ContentIntegrityScorer(mode="ratio"),
                                    ContentIntegrityScorer(threshold=0.5, forbidden_penalty=0.0)], ids=repr)
def test_content_integrity_passes_in_each_mode(scorer, results):
    report = check_scorer(scorer, results)
    passes(report, len(results), ("scores",))
    assert report.max_batch_deviation == 0.0  # a per-row function: bitwise batch invariant


@pytest.mark.slow
@pytest.mark.parametrize("term", ["aesthetic", "pickscore"])
def test_tiny_image_scorers_pass(tiny, results, term):
    scorer = tiny.terms[term][0]
    report = check_scorer(scorer, results)
    passes(report, len(results), ("scores",))
    assert 0 < report.max_batch_deviation < 2e-3  # renders of different batch sizes differ by float round-off
    # ... which the exact comparison catches: the tolerance is what lets image scorers pass
    with pytest.raises(ScorerCheckError, match="batch_invariance") as failed:
        check_scorer(scorer, results, batch_invariance="exact")
    assert failed.value.property == "batch_invariance" and failed.value.rows


@pytest.mark.slow
def test_tiny_composite_reward_and_its_counting_wrapper_pass(tiny, results):
    expected = ("total", "aesthetic/source", "aesthetic/delta", "aesthetic", "pickscore/source", "pickscore/delta",
                "pickscore", "integrity")
    passes(check_scorer(tiny, results), len(results), expected)
    counting = CountingReward(tiny)
    passes(check_scorer(counting, results), len(results), expected)
    n = len(results)
    # empty + batch + cached + recomputed + n singletons + reversed: what the report says was called
    assert counting.batch_sizes == [0, n, n, n, *[1] * n, n]


def test_semantic_consistency_passes_offline(results):
    passes(check_scorer(SemanticConsistencyScorer.from_pretrained(), results), len(results), ("scores",))


def test_gold_scorers_pass_on_the_scene_renderer(results):
    renderer = SceneRenderer()
    passes(check_scorer(GoldAestheticScorer(renderer), results), len(results), ("scores",))
    content = GoldContentScorer.from_pretrained(synth_path("judge"), renderer)
    passes(check_scorer(content, results), len(results), ("scores",))
    # a task without a target scores NaN by design: allowed when asked, an error otherwise
    untargeted = [*results, EditResult(EditTask("a dog", "make it red"), "a red dog")]
    passes(check_scorer(content, untargeted, allow_nan=True), len(untargeted), ("scores",))
    with pytest.raises(ScorerCheckError, match=r"finite: .*nan.*rows \[6\]") as failed:
        check_scorer(content, untargeted)
    assert failed.value.rows == (6,)


def test_composite_monitors_may_be_nan(results):
    class NaNMonitor:
        name = "nan"

        def __call__(self, batch):
            return torch.full((len(batch),), math.nan)

    reward = CompositeReward({"integrity": (ContentIntegrityScorer(), 1.0)}, monitors={"gold/nan": NaNMonitor()})
    passes(check_scorer(reward, results), len(results), ("total", "integrity", "gold/nan"))


# ------------------------------------------------------------------------------------ broken scorers fail


class Broken:
    """A scorer = a function of the results list; `score(results) -> anything`."""

    name = "broken"

    def __init__(self, score) -> None:
        self.score = score

    def __call__(self, results):
        return self.score(results)


def lengths(results) -> torch.Tensor:
    return torch.tensor([float(len(r.prompt)) for r in results])


def test_a_correct_toy_scorer_passes_exactly(results):
    """The baseline the broken scorers below differ from: prompt length, a pure per-row function."""
    report = check_scorer(Broken(lengths), results, batch_invariance="exact")
    assert report.checks == ALL_CHECKS and report.max_batch_deviation == 0.0


@pytest.mark.parametrize(
    ("score", "prop", "message", "rows"),
    [
        (lambda rs: lengths(rs).numpy(), "type", "returned ndarray; expected a torch.Tensor of shape", ()),
        (lambda rs: lengths(rs).tolist(), "type", "returned list", ()),
        (lambda rs: lengths(rs).long(), "dtype", "dtype torch.int64; expected torch.float32", ()),
        (lambda rs: lengths(rs)[:, None], "shape", r"shape \(0, 1\); expected \(0,\)", ()),
        (lambda rs: torch.zeros(max(len(rs), 1)), "shape", r"empty call has shape \(1,\); expected \(0,\)", ()),
        (lambda rs: torch.cat([lengths(rs), torch.zeros(1)]) if rs else lengths(rs), "shape",
         r"batch call has shape \(7,\); expected \(6,\)", ()),
        (lambda rs: lengths(rs) / lengths(rs).max(), "empty_batch", "empty call raised RuntimeError", ()),
        (lambda rs: torch.tensor([math.nan if WORD in r.prompt else 1.0 for r in rs]), "finite", "nan", None),
        (lambda rs: torch.tensor([math.inf if WORD in r.prompt else 1.0 for r in rs]), "finite", "inf", None),
        (lambda rs: torch.rand(len(rs)), "determinism", "repeated call", (0, 1, 2, 3, 4, 5)),
        (lambda rs: lengths(rs) - lengths(rs).mean(), "batch_invariance", "batch call, by row", None),
        (lambda rs: lengths(rs) + torch.arange(len(rs)), "batch_invariance", "batch call, by row", (1, 2, 3, 4, 5)),
    ],
    ids=["numpy", "list", "int", "2d", "empty-shape", "extra-row", "raises-on-empty", "nan", "inf", "random",
         "batch-mean", "position"],
)
def test_broken_scorers_fail_naming_the_property(results, score, prop, message, rows):
    with pytest.raises(ScorerCheckError, match=message) as failed:
        check_scorer(Broken(score), results)
    assert failed.value.property == prop
    assert str(failed.value).startswith(f"check_scorer('broken') {prop}:")
    if rows is None:  # rows computed independently of the checker
        if prop == "finite":
            rows = tuple(i for i, r in enumerate(results) if WORD in r.prompt)
        else:  # minus the batch mean: every row whose length differs from the batch mean
            rows = tuple(i for i, r in enumerate(results) if len(r.prompt) != float(lengths(results).mean()))
        assert rows  # the fixture has such rows, so the test can fail
    assert failed.value.rows == rows


def test_float64_cuda_free_grad_are_warnings_not_errors(results):
    with pytest.warns(ScorerCheckWarning, match="dtype torch.float64; the Scorer protocol says float32"):
        report = check_scorer(Broken(lambda rs: lengths(rs).double()), results)
    assert report.checks == ALL_CHECKS and len(report.warnings) == 1
    with pytest.warns(ScorerCheckWarning, match="requires grad"):
        check_scorer(Broken(lambda rs: lengths(rs).requires_grad_()), results)
    with pytest.warns(ScorerCheckWarning, match="cannot show batch dependence"):
        check_scorer(Broken(lengths), results[:1])


def test_small_batch_noise_passes_the_tolerance_and_fails_exact(results):
    noisy = Broken(lambda rs: lengths(rs) / 100 + 1e-4 * len(rs))  # scores ~0.5, batch of 6 vs 1: 5e-4 apart
    assert check_scorer(noisy, results).max_batch_deviation == pytest.approx(5e-4, rel=1e-2)
    with pytest.raises(ScorerCheckError, match="batch_invariance"):
        check_scorer(noisy, results, batch_invariance="exact")
    with pytest.raises(ScorerCheckError, match="batch_invariance"):
        check_scorer(noisy, results, batch_invariance=1e-5)


def test_order_dependent_scorer_fails_on_the_reversed_batch():
    """Rows equal alone and in order, but the scorer keys on the first row: only the reversed batch shows it."""
    tasks = [EditTask("a dog", "x", id="a"), EditTask("a cat", "y", id="b")]

    def first_row_wins(rs):
        return torch.tensor([1.0 if rs and r.task.id == rs[0].task.id == "a" else 0.0 for r in rs])

    with pytest.raises(ScorerCheckError, match="reversed batch") as failed:
        check_scorer(Broken(first_row_wins), tasks)
    assert failed.value.rows == (0,)


def test_mutating_the_list_or_a_record_fails(results):
    def reverses(rs):
        rs.reverse()
        return lengths(rs)

    with pytest.raises(ScorerCheckError, match="no_mutation: the batch call changed its input"):
        check_scorer(Broken(reverses), results)

    def rewrites_a_prompt(rs):
        for r in rs:
            if WORD in r.prompt:
                object.__setattr__(r, "prompt", r.prompt.upper())
        return lengths(rs)

    rows = tuple(i for i, r in enumerate(results) if WORD in r.prompt)
    copies = [EditResult(r.task, r.prompt) for r in results]  # the fixture stays intact for the other tests
    with pytest.raises(ScorerCheckError, match="no_mutation") as failed:
        check_scorer(Broken(rewrites_a_prompt), copies)
    assert failed.value.rows == rows


def test_normalised_composite_is_not_deterministic(results):
    """Running normalisation makes a prompt's reward depend on history: check_scorer says so."""
    reward = CompositeReward({"len": (Broken(lengths), 1.0)}, normalize=True)
    with pytest.raises(ScorerCheckError, match="determinism: total"):
        check_scorer(reward, results)


def test_tasks_with_prompts_and_bad_arguments():
    tasks = [EditTask("a red dog", "make it blue", "a blue dog"), EditTask("a cat", "add a hat")]
    seen = []
    report = check_scorer(Broken(lambda rs: seen.append([r.prompt for r in rs]) or lengths(rs)), tasks)
    assert report.checks == ALL_CHECKS and seen[1] == ["a blue dog", "a cat"]  # target, else source
    seen.clear()
    check_scorer(Broken(lambda rs: seen.append([r.prompt for r in rs]) or lengths(rs)), tasks, prompts=["x", "yy"])
    assert seen[1] == ["x", "yy"]
    with pytest.raises(ValueError, match="one str per task"):
        check_scorer(Broken(lengths), tasks, prompts=["x"])
    with pytest.raises(ValueError, match="non-empty sequence"):
        check_scorer(Broken(lengths), [])
    with pytest.raises(ValueError, match="prompts is given with EditResults"):
        check_scorer(Broken(lengths), [EditResult(tasks[0], "x")], prompts=["y"])
    with pytest.raises(TypeError, match=r"tasks_or_results\[1\]"):
        check_scorer(Broken(lengths), [tasks[0], "a dog"])
    with pytest.raises(ValueError, match="batch_invariance=-1"):
        check_scorer(Broken(lengths), tasks, batch_invariance=-1)
    with pytest.raises(TypeError, match="expected a Scorer"):
        check_scorer(3, tasks)
    assert issubclass(ScorerCheckError, AssertionError)  # a failed check reads as a failed test


# ------------------------------------------------------------------------------------ check_shaping


def make_env(shaping, vector: str | None = None, max_new_tokens: int = 12):
    kwargs = dict(reward=ContentIntegrityScorer(), shaping=shaping, max_new_tokens=max_new_tokens)
    if vector is None:
        return PromptEditEnv(**kwargs)
    return PromptEditVectorEnv(3, autoreset_mode=vector, **kwargs)


@pytest.mark.parametrize("vector", [None, "next_step", "disabled"])
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_shipped_potential_shaping_passes(vector, gamma):
    shaping = PotentialShaping(gamma=gamma)
    report = check_shaping(shaping, make_env(shaping, vector), episodes=8, seed=1)
    assert report.episodes >= 8 and report.terminated > 0 and report.truncated > 0  # both ends were exercised
    assert report.steps > report.episodes
    assert report.max_abs_phi > 0  # the integrity potential moved, so the check compared something
    assert report.max_step_error <= 1e-12 and report.max_sum_error <= 1e-12 and report.warnings == ()


def test_registered_wrapped_env_is_checked_through_its_wrappers():
    shaping = PotentialShaping(gamma=0.95)
    env = gymnasium.make(ENV_ID, reward=ContentIntegrityScorer(), shaping=shaping, max_new_tokens=8)
    assert check_shaping(shaping, env, episodes=3).episodes == 3


class Bonus(PotentialShaping):
    """Not potential-based: a constant bonus per step (the classic way shaping makes an agent loop)."""

    def term(self, phi_before, phi_after):
        return super().term(phi_before, phi_after) + 0.1


class Undiscounted(PotentialShaping):
    """Phi(s') - Phi(s) whatever gamma: potential-based only when gamma = 1."""

    def term(self, phi_before, phi_after):
        return phi_after - phi_before


class CountingPotential(PotentialShaping):
    """Phi depends on how often it was asked (not on the state): the env's Phi and a recomputed one disagree."""

    def __init__(self):
        super().__init__(lambda task, text: 0.0)
        self.calls = 0

    def phi(self, task, prefix_text, terminal=False):
        self.calls += 1
        return 0.0 if terminal else float(self.calls)


@pytest.mark.parametrize("vector", [None, "next_step"])
def test_constant_bonus_fails_at_the_first_step(vector):
    shaping = Bonus()
    with pytest.raises(ShapingCheckError, match=r"episode 0 \(task id=.*\), step 0: the env paid F=0.1, but") as failed:
        check_shaping(shaping, make_env(shaping, vector))
    assert (failed.value.episode, failed.value.step) == (0, 0)


def test_undiscounted_term_passes_at_gamma_1_and_fails_below():
    exact = Undiscounted(gamma=1.0)
    assert check_shaping(exact, make_env(exact), episodes=4).episodes == 4
    shaping = Undiscounted(gamma=0.5)
    with pytest.raises(ShapingCheckError, match=r"gamma\*Phi\(s'\)-Phi\(s\) = 0.5\*") as failed:
        check_shaping(shaping, make_env(shaping), episodes=4)
    # 0.5*Phi' - Phi differs from Phi' - Phi only where Phi(s') != 0: that is where it broke
    phi_after = float(re.search(r"= 0.5\*(\S+) - ", str(failed.value)).group(1))
    assert phi_after != 0.0


def test_non_markov_potential_fails():
    shaping = CountingPotential()
    with pytest.raises(ShapingCheckError, match="not potential-based") as failed:
        check_shaping(shaping, make_env(shaping))
    assert failed.value.episode == 0


def test_nonzero_terminal_potential_warns():
    shaping = PotentialShaping(zero_at_terminal=False)
    with pytest.warns(ShapingCheckWarning, match="Phi of a terminal state is not 0"):
        report = check_shaping(shaping, make_env(shaping), episodes=8)
    assert report.max_sum_error <= 1e-12 and len(report.warnings) == 1  # it still telescopes


def test_check_shaping_rejects_envs_it_cannot_check():
    shaping = PotentialShaping()
    with pytest.raises(ValueError, match="built with shaping="):
        check_shaping(shaping, make_env(None))
    with pytest.raises(ValueError, match="not the shaping="):
        check_shaping(PotentialShaping(), make_env(shaping))
    with pytest.raises(ValueError, match="episodes=0"):
        check_shaping(shaping, make_env(shaping), episodes=0)
    assert issubclass(ShapingCheckError, AssertionError)


def test_same_seed_same_episodes():
    shaping = PotentialShaping(gamma=0.9)
    first = check_shaping(shaping, make_env(shaping), episodes=5, seed=3)
    again = check_shaping(shaping, make_env(shaping), episodes=5, seed=3)
    other = [check_shaping(shaping, make_env(shaping), episodes=5, seed=s) for s in (4, 5, 6)]
    assert first == again
    assert any(report.steps != first.steps for report in other)
    assert np.isfinite(first.max_abs_phi)
