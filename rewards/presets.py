"""`build_reward(preset)`: the reward stacks promptgym ships, offline-tiny and real.

| preset          | renderer                          | aesthetic                                   | PickScore                | integrity |
|-----------------|-----------------------------------|---------------------------------------------|--------------------------|-----------|
| `tiny`          | tiny random SD, 32x32, 4 DDIM steps, K=2 | tiny random CLIP + LAION-shaped MLP   | tiny random CLIP         | binary, 0.8 |
| `synth`         | the synth world's trained tiny SD, 32x32, 10 DDIM steps, guidance 3, K=2 | its trained CLIP + LAION-format MLP fitted to gold aesthetic | its trained CLIP | binary, 0.8 |
| `synth-gold`    | as `synth` | monitor | monitor | monitor (the oracle: reward = gold content + gold aesthetic) |
| `surrogate`     | none for the reward (the synth SD renders for the gold monitors only) | `aes_rm(prompt)`: MiniLM + MLP fitted to synth's aesthetic, weight 0.7 | `ps_rm(source, prompt)`: MiniLM + MLP fitted to synth's PickScore, weight 0.3 | binary, 0.8 |
| `diffchat-sd15` | `stable-diffusion-v1-5/stable-diffusion-v1-5`, 512x512, 20 steps, K=2 | `openai/clip-vit-large-patch14` + LAION improved-aesthetic MLP | `yuvalkirstain/PickScore_v1` | binary, 0.8 |

`tiny`, `synth` and `diffchat-sd15` weight the three terms 1 : 1 : 1 and score the image terms in *delta* mode (edited prompt minus
the unedited source prompt, rendered from the same noise), so an image term measures what the edit changed
and sits near 0 with a spread of about 0.1-1 (aesthetic scores are ~4-7, PickScore ~18-23 for SD 1.5). No
preset normalises by running statistics, so an environment's reward stays a fixed function of the prompt.
Every choice is an override: `build_reward("tiny", weights={"pickscore": 0.0})`.

`synth` has one more, opt-in term (`SYNTH_OPTIONAL_WEIGHTS`, weight 0 by default): `feedback`, the reward model
trained on (simulated) binary feedback of Lee et al. 2023 (`LearnedRewardScorer`, shipped in
`promptgym/rewards/data/synth/feedback`), an image term like PickScore (delta mode, the same shared renders):
`build_reward("synth", weights={"feedback": 1.0})`. The gold monitors stay on whatever the weights.

The tiny stack's scores exercise the pipeline and say nothing about image quality. The synth stack's models are
trained on the procedural scene world (`promptgym world build`, shipped in `promptgym/rewards/data/synth`), and
its rewards carry the gold metrics `gold/content` and `gold/aesthetic` as monitors: reported beside the proxy
terms in every reward output, never part of the total. `synth-gold` rewards with the gold metrics themselves.

`surrogate` is BeautifulPrompt's text-only reward on the synth world: r = a * aes_rm(prompt) + (1 - a) *
ps_rm(source, prompt) with a = 0.7 (`SURROGATE_WEIGHTS`), both text regressors (`promptgym.rewards.surrogate`)
fitted to the synth image scorers' scores by `promptgym reward fit-surrogate`, plus content integrity. Its two terms
are deltas against the source by default, as in `synth` and as BeautifulPrompt does: the regressors are fitted to
absolute scores, but what an edit should be rewarded for is what it changed, and a delta cancels the part of a
regressor's error that edited prompt and source share (its Spearman with the image reward's deltas is in
`surrogate/eval.json`). The reward itself renders nothing; the gold monitors (`gold/content`, `gold/aesthetic`,
`gold/text_content`) still render the edited prompts with the synth SD, so every metric row reports gold beside
the proxy, exactly as `synth` does. `monitors=False` drops them (then no render at all: the fast reward).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from promptgym.rewards.composite import CompositeReward
from promptgym.rewards.feedback import LearnedRewardScorer
from promptgym.rewards.gold import GoldAestheticScorer, GoldContentScorer, GoldTextContentScorer
from promptgym.rewards.image_scorers import AestheticScorer, PickScoreScorer
from promptgym.rewards.integrity import ContentIntegrityScorer
from promptgym.rewards.render import DiffusersRenderer
from promptgym.rewards.scene_render import SceneRenderer
from promptgym.rewards.score_table import ScoreTable
from promptgym.rewards.surrogate import SentenceEmbedder, SurrogateScorer, surrogate_path
from promptgym.rewards.world import SYNTH_RENDER_SETTINGS, synth_path

PRESETS = ("tiny", "synth", "synth-gold", "surrogate", "diffchat-sd15")
IMAGE_TERMS = ("aesthetic", "pickscore")
DEFAULT_WEIGHTS = {"aesthetic": 1.0, "pickscore": 1.0, "integrity": 1.0}
SYNTH_OPTIONAL_WEIGHTS = {"feedback": 0.0}  # synth-only image terms, off unless weighted
SYNTH_SCORE_TABLE = "source_scores.json"  # in the synth world's directory: `promptgym reward build-score-table`
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
CLIP_L14 = "openai/clip-vit-large-patch14"
LAION_MLP = "trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth"
PICKSCORE = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


GOLD_WEIGHTS = {"gold/content": 1.0, "gold/aesthetic": 1.0}
SURROGATE_ALPHA = 0.7  # BeautifulPrompt's weight of the aesthetic regressor; PickScore gets 1 - alpha
SURROGATE_WEIGHTS = {"aesthetic": SURROGATE_ALPHA, "pickscore": round(1.0 - SURROGATE_ALPHA, 12), "integrity": 1.0}


def default_weights(preset: str) -> dict[str, float]:
    """The reward terms of `preset` and their default weights (`synth`: with its optional terms at weight 0)."""
    if preset == "synth-gold":
        return dict(GOLD_WEIGHTS)
    if preset == "surrogate":
        return dict(SURROGATE_WEIGHTS)
    return DEFAULT_WEIGHTS | SYNTH_OPTIONAL_WEIGHTS if preset == "synth" else dict(DEFAULT_WEIGHTS)


def byte_tokenizer(model_max_length: int = 77) -> PreTrainedTokenizerFast:
    """A corpus-free byte-level tokenizer (`<pad>`, `</s>`, `<s>` + 256 bytes) for tiny text encoders."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<pad>": 0, "</s>": 1, "<s>": 2} | {char: i + 3 for i, char in enumerate(alphabet)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", bos_token="<s>", model_max_length=model_max_length
    )


def build_reward(
    preset: str = "tiny",
    *,
    tokenizer: Any = None,
    weights: Mapping[str, float] | None = None,
    renderer: Mapping[str, Any] | None = None,
    integrity: Mapping[str, Any] | None = None,
    delta: bool | list[str] | None = None,
    normalize: bool | list[str] | None = None,
    on_error: str = "raise",
    seed: int = 0,
    device: str | None = None,
    monitors: bool = True,
    score_table: str | os.PathLike | None = "auto",
) -> CompositeReward:
    """The `preset` reward stack, with overrides.

    Args:
        preset: "tiny" (offline, random tiny models), "synth" (the synth world's trained models), "synth-gold" (its
            gold metrics), "surrogate" (text-only regressors of synth's image scores) or "diffchat-sd15" (real
            checkpoints; needs them downloaded, and a GPU to be practical).
        tokenizer: the text tokenizer of the tiny text encoders (tiny preset only; default: `byte_tokenizer()`;
            the env passes its own).
        weights: per-term weights, merged over the preset's (`default_weights`: 1 : 1 : 1, surrogate 0.7 : 0.3 : 1);
            a weight of 0 drops the term (and its render cost).
        renderer: keyword overrides for the renderer constructor (steps, size, `images_per_prompt`, ...); in
            `surrogate`, of the renderer of the gold monitors.
        integrity: keyword overrides for `ContentIntegrityScorer` (`threshold`, `mode`, `forbidden_penalty`, `edit_weight`).
        delta: override which terms are scored in delta mode (default: the image terms).
        normalize: per-term running mean/std normalisation, as Stable-Baselines3's `VecNormalize` does for a
            reward (default off; the `synth` config turns it on): the reward of a prompt then depends on the
            statistics so far, which checkpoints save and evaluations leave untouched.
        on_error: "raise" or "zero" (see `CompositeReward`).
        seed: seeds the tiny models' weights and the render noise.
        device: where real models run (e.g. "cuda"; in `surrogate`, the sentence encoder); the tiny preset runs on
            the CPU.
        monitors: False drops the gold monitors of the synth-world presets (`synth`, `synth-gold`, `surrogate`):
            no gold columns, and `surrogate` renders nothing.
        score_table: precomputed source scores of the image terms (`promptgym.rewards.score_table`): "auto" (the
            world's shipped table, `synth` only: the demo tasks' sources at the default render settings; the terms
            whose settings or weights differ simply miss it), a path to a table, or None (render every source).
    """
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r}; expected one of {list(PRESETS)}")
    if preset != "tiny" and tokenizer is not None:
        raise ValueError("tokenizer is only used by the tiny preset; trained and real checkpoints bring their own tokenizers")
    if preset == "synth-gold":
        reward = _synth_gold_reward(weights, renderer, integrity, delta, normalize, on_error, seed, monitors)
    else:
        reward = _preset_reward(preset, tokenizer, weights, renderer, integrity, delta, normalize, on_error, seed,
                                device, monitors)
    if (table := _score_table(preset, score_table)) is not None:
        table.attach(reward)
    return reward


def _preset_reward(preset: str, tokenizer: Any, weights: Mapping[str, float] | None,
                   renderer: Mapping[str, Any] | None, integrity: Mapping[str, Any] | None,
                   delta: bool | list[str] | None, normalize: bool | list[str] | None, on_error: str, seed: int,
                   device: str | None, monitors: bool) -> CompositeReward:
    terms = default_weights(preset)
    weights = {**terms, **(weights or {})}
    unknown = sorted(set(weights) - set(terms))
    if unknown:
        only_synth = " (feedback is a synth term)" if set(unknown) & set(SYNTH_OPTIONAL_WEIGHTS) else ""
        raise ValueError(f"weights name unknown terms {unknown}; terms are {sorted(terms)}{only_synth}")
    active = {name for name, weight in weights.items() if weight != 0}
    if not active:
        raise ValueError(f"weights={weights} leave no term with a non-zero weight")
    image_terms = [name for name in (*IMAGE_TERMS, *SYNTH_OPTIONAL_WEIGHTS) if name in active]
    scorers: dict[str, Any] = {}
    gold: dict[str, Any] = {}
    if preset == "synth":
        shared = synth_renderer(seed, renderer)
        scorers |= synth_image_scorers(image_terms, shared)
        gold = synth_gold_scorers(shared) if monitors else {}
    elif preset == "surrogate":
        scorers |= surrogate_scorers(image_terms, device=device)
        gold = synth_gold_scorers(synth_renderer(seed, renderer)) if monitors else {}
    elif image_terms:
        build = _tiny_image_scorers if preset == "tiny" else _sd15_image_scorers
        scorers |= build(image_terms, tokenizer, dict(renderer or {}), seed, device)
    if "integrity" in active:
        scorers["integrity"] = ContentIntegrityScorer(**dict(integrity or {}))
    return CompositeReward(
        {name: (scorers[name], weights[name]) for name in scorers},
        delta=image_terms if delta is None else delta,
        normalize=False if normalize is None else normalize,
        on_error=on_error,
        monitors=gold,
    )


def _score_table(preset: str, spec: str | os.PathLike | None) -> ScoreTable | None:
    """The `score_table` argument of `build_reward` as a table (None: no table)."""
    if spec is None:
        return None
    if str(spec) != "auto":
        return ScoreTable.load(spec)
    if preset != "synth":
        return None
    try:
        return ScoreTable.load(synth_path(SYNTH_SCORE_TABLE))
    except FileNotFoundError:  # a world without a shipped table (e.g. one built elsewhere with PROMPTGYM_SYNTH_DIR)
        return None


def synth_renderer(seed: int = 0, overrides: Mapping[str, Any] | None = None) -> DiffusersRenderer:
    """The synth world's trained Stable Diffusion, rendered with `SYNTH_RENDER_SETTINGS` unless overridden."""
    settings = {**SYNTH_RENDER_SETTINGS, "seed": seed, **dict(overrides or {})}
    return DiffusersRenderer.from_pretrained(synth_path("sd"), **settings)


def synth_gold_scorers(renderer: Any) -> dict[str, Any]:
    """{"gold/content": ..., "gold/aesthetic": ...} on `renderer`'s images, judged by the shipped `SceneJudge`, and
    "gold/text_content" (what the prompt's words ask for against the target scene: no render)."""
    content = GoldContentScorer.from_pretrained(synth_path("judge"), renderer)
    return {"gold/content": content, "gold/aesthetic": GoldAestheticScorer(renderer),
            "gold/text_content": GoldTextContentScorer()}


def synth_image_scorers(terms: Sequence[str], renderer: DiffusersRenderer) -> dict[str, Any]:
    """{"aesthetic": AestheticScorer, "pickscore": PickScoreScorer} (those of `terms`) of the synth world's trained
    CLIP and aesthetic MLP, scoring `renderer`'s images: the image terms of `build_reward("synth")`."""
    scorers: dict[str, Any] = {}
    if "aesthetic" in terms:
        scorers["aesthetic"] = AestheticScorer.from_pretrained(
            clip=synth_path("clip"), mlp=synth_path("aesthetic", "aesthetic-model.safetensors"), renderer=renderer
        )
    if "pickscore" in terms:
        scorers["pickscore"] = PickScoreScorer.from_pretrained(
            model=synth_path("clip"), processor=synth_path("clip"), renderer=renderer
        )
    if "feedback" in terms:
        scorers["feedback"] = LearnedRewardScorer.from_pretrained(_synth_feedback_path(), renderer=renderer)
    return scorers


def surrogate_scorers(terms: Sequence[str], embedder: SentenceEmbedder | None = None,
                      device: str | None = None) -> dict[str, SurrogateScorer]:
    """{"aesthetic": aes_rm, "pickscore": ps_rm} (those of `terms`): the shipped surrogate heads
    (`surrogate_path(term)`), sharing one `SentenceEmbedder` (default: the bundled MiniLM they were fitted on, on
    `device`)."""
    if not terms:
        return {}
    paths = {term: surrogate_path(term) for term in terms}
    embedder = embedder or SentenceEmbedder.from_pretrained(device=device)
    return {term: SurrogateScorer.from_pretrained(path, embedder=embedder, name=term) for term, path in paths.items()}


def _synth_feedback_path() -> Any:
    """The shipped feedback reward model's directory; missing, a FileNotFoundError naming the commands that build it."""
    try:
        return synth_path("feedback")
    except FileNotFoundError:
        raise FileNotFoundError(
            "the synth feedback reward model is missing; build it with `promptgym reward simulate-feedback --out "
            "LABELS.jsonl` then `promptgym reward fit-feedback --labels LABELS.jsonl --out <synth dir>/feedback` "
            "(see promptgym.rewards.feedback)"
        ) from None


def _synth_gold_reward(weights: Mapping[str, float] | None, renderer: Mapping[str, Any] | None,
                       integrity: Mapping[str, Any] | None, delta: Any, normalize: Any, on_error: str,
                       seed: int, monitors: bool = True) -> CompositeReward:
    """The oracle: reward = gold content + gold aesthetic (delta against the source) of the synth renders, with the
    proxy terms (aesthetic, PickScore, integrity) as monitors, so a gold-trained policy shows what it does to them.
    A proxy term may be named in `weights` with weight 0 (it is a monitor here), so a config built on `synth` can
    switch to this preset without unsetting its proxy weights."""
    proxy_terms = DEFAULT_WEIGHTS | SYNTH_OPTIONAL_WEIGHTS
    proxy = {name: w for name, w in (weights or {}).items() if name in proxy_terms}
    if any(w != 0 for w in proxy.values()):
        raise ValueError(f"weights {proxy} give proxy terms a weight; in synth-gold they are monitors (weight 0), "
                         f"and the terms are {sorted(GOLD_WEIGHTS)} (and gold/text_content)")
    weights = {**GOLD_WEIGHTS, **{n: w for n, w in (weights or {}).items() if n not in proxy_terms}}
    shared = synth_renderer(seed, renderer)
    gold = synth_gold_scorers(shared)
    unknown = sorted(set(weights) - set(gold))
    if unknown:
        raise ValueError(f"weights name unknown terms {unknown}; the synth-gold terms are {sorted(gold)}")
    terms = {name: (gold[name], weight) for name, weight in weights.items() if weight != 0}
    if not terms:
        raise ValueError(f"weights={weights} leave no term with a non-zero weight")
    return CompositeReward(
        terms,
        delta=[n for n in terms if n == "gold/aesthetic"] if delta is None else delta,
        normalize=False if normalize is None else normalize,
        on_error=on_error,
        monitors={**synth_image_scorers(list(IMAGE_TERMS), shared),
                  "integrity": ContentIntegrityScorer(**dict(integrity or {})),
                  **{name: scorer for name, scorer in gold.items() if name not in terms}} if monitors else {},
    )


def _tiny_image_scorers(terms: list[str], tokenizer: Any, renderer_kwargs: dict, seed: int, device: Any) -> dict:
    tokenizer = tokenizer if tokenizer is not None else byte_tokenizer()
    renderer = DiffusersRenderer.tiny(tokenizer, **({"seed": seed} | renderer_kwargs))  # a "seed" override wins
    scorers: dict[str, Any] = {}
    if "aesthetic" in terms:
        scorers["aesthetic"] = AestheticScorer.tiny(seed=seed, image_size=renderer.height, renderer=renderer)
    if "pickscore" in terms:
        scorers["pickscore"] = PickScoreScorer.tiny(tokenizer, seed=seed, image_size=renderer.height, renderer=renderer)
    return scorers


def _sd15_image_scorers(terms: list[str], tokenizer: Any, renderer_kwargs: dict, seed: int, device: Any) -> dict:
    renderer_kwargs = {"num_inference_steps": 20, "images_per_prompt": 2, "seed": seed, "device": device} | renderer_kwargs
    renderer = DiffusersRenderer.from_pretrained(SD15, **renderer_kwargs)
    scorers: dict[str, Any] = {}
    if "aesthetic" in terms:
        scorers["aesthetic"] = AestheticScorer.from_pretrained(clip=CLIP_L14, mlp=LAION_MLP, renderer=renderer, device=device)
    if "pickscore" in terms:
        scorers["pickscore"] = PickScoreScorer.from_pretrained(
            model=PICKSCORE, processor=PICKSCORE_PROCESSOR, renderer=renderer, device=device
        )
    return scorers


def preset_renderer(preset: str = "tiny", *, tokenizer: Any = None, seed: int = 0,
                    settings: Mapping[str, Any] | None = None, device: str | None = None) -> Any:
    """The renderer a reward preset renders with (`tiny`, `synth`/`synth-gold`/`surrogate`: the synth SD,
    `diffchat-sd15`), or `scene`: the synth world's exact procedural renderer (`SceneRenderer`)."""
    settings = dict(settings or {})
    if preset == "tiny":
        return DiffusersRenderer.tiny(tokenizer if tokenizer is not None else byte_tokenizer(), **({"seed": seed} | settings))
    if preset in ("synth", "synth-gold", "surrogate"):
        return synth_renderer(seed, settings)
    if preset == "scene":
        return SceneRenderer(**({"seed": seed} | settings))
    if preset == "diffchat-sd15":
        return DiffusersRenderer.from_pretrained(SD15, device=device, **({"seed": seed} | settings))
    raise ValueError(f"preset={preset!r}; expected one of {[*PRESETS, 'scene']}")


def clear_reward_caches(reward: CompositeReward) -> None:
    """Empty every render cache, image-score cache and text-embedding cache behind a reward's terms and monitors
    (e.g. after changing model weights; the `surrogate` reward's only renderer is its gold monitors'), then pin the
    reward's `ScoreTable` again where its terms' signatures still match."""
    for scorer in [scorer for scorer, _ in reward.terms.values()] + list(getattr(reward, "monitors", {}).values()):
        if (cache := getattr(scorer, "score_cache", None)) is not None:
            cache.clear()
        if (renderer := getattr(scorer, "renderer", None)) is not None:
            renderer.clear_cache()
        if (embedder := getattr(scorer, "embedder", None)) is not None:
            embedder.clear_cache()
    if (table := getattr(reward, "score_table", None)) is not None:
        table.attach(reward)  # a table is not a cache; re-matched to the (maybe changed) weights


def reward_stats(reward: CompositeReward) -> dict[str, float]:
    """Render-cache, score-cache and embedding-cache counters of the renderers, scorers and sentence embedders behind
    a reward (for logging)."""
    stats: dict[str, float] = {}
    for name, (scorer, _) in reward.terms.items():
        if (cache := getattr(scorer, "score_cache", None)) is not None:
            stats |= {f"score_cache/{name}_hits": float(cache.hits), f"score_cache/{name}_misses": float(cache.misses),
                      f"score_cache/{name}_table_hits": float(cache.pinned_hits)}
    renderers = {id(r): r for scorer, _ in reward.terms.values() if (r := getattr(scorer, "renderer", None)) is not None}
    for i, renderer in enumerate(renderers.values()):
        prefix = "render/" if len(renderers) == 1 else f"render{i}/"
        info = renderer.cache_info()
        stats |= {
            f"{prefix}cache_hits": float(info.hits),
            f"{prefix}cache_misses": float(info.misses),
            f"{prefix}pipeline_calls": float(renderer.pipeline_calls),
            f"{prefix}images_rendered": float(renderer.images_rendered),
        }
    embedders = {id(e): e for scorer, _ in reward.terms.values() if (e := getattr(scorer, "embedder", None)) is not None}
    for i, embedder in enumerate(embedders.values()):
        prefix = "embed/" if len(embedders) == 1 else f"embed{i}/"
        stats |= {f"{prefix}cache_hits": float(embedder.hits), f"{prefix}cache_misses": float(embedder.misses)}
    return stats
