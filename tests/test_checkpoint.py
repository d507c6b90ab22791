"""Checkpoints: exact resume, plain-transformers loading, exact optimizer state, atomic writes, clear errors."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from importlib.metadata import version

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from promptgym.agents import checkpoint as ckpt
from promptgym.agents.checkpoint import (
    FORMAT_VERSION,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from promptgym.agents.kl import AdaptiveKLController
from promptgym.agents.policy import PolicyWithValue, fuse_gelu_modules
from promptgym.envs import EditTask, default_tokenizer
from promptgym.rewards import CompositeReward, EditResult

WORDS = ["castle", "night", "forest", "neon", "storm", "portrait", "river", "golden"]
TASK = EditTask(source="a castle", instruction="make it night")


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


def tiny(tok, seed=0, separate_critic=False, hidden_size=32) -> PolicyWithValue:
    return PolicyWithValue.tiny(
        tok, seed=seed, hidden_size=hidden_size, num_layers=1, num_heads=2, separate_critic=separate_critic
    )


class LengthScorer:
    name = "length"

    def __call__(self, results):
        return torch.tensor([float(len(r.prompt)) for r in results])


@dataclass
class Run:
    policy: PolicyWithValue
    optimizer: torch.optim.Optimizer
    kl: AdaptiveKLController
    reward: CompositeReward
    generators: dict
    step: int = 0


def make_run(tok, seed: int, separate_critic: bool) -> Run:
    policy = tiny(tok, seed=seed, separate_critic=separate_critic)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2, weight_decay=0.01)
    kl = AdaptiveKLController(0.1 + seed, target=0.5, horizon=10)
    reward = CompositeReward({"length": (LengthScorer(), 1.0)}, normalize=True)
    generators = {
        "minibatch": np.random.default_rng(seed),
        "noise": torch.Generator().manual_seed(seed),
        "coin": random.Random(seed),
    }
    return Run(policy, optimizer, kl, reward, generators)


def train_step(run: Run, data: torch.Tensor) -> None:
    """One AdamW step whose batch, noise and loss depend on every RNG, the KL coefficient and the reward stats."""
    idx = run.generators["minibatch"].choice(len(data), size=4, replace=False)  # named numpy generator
    ids = data[torch.as_tensor(idx)].clone()
    ids[:, np.random.randint(1, ids.shape[1])] = torch.randint(0, 50, (4,))  # numpy + torch global RNGs
    prompts = [" ".join(random.choices(WORDS, k=random.randint(1, 4))) for _ in range(4)]  # Python global RNG
    normalized = run.reward([EditResult(TASK, p) for p in prompts]).total  # running stats update
    value_targets = torch.randn(ids.shape, generator=run.generators["noise"]) + normalized[:, None]
    out = run.policy(ids, torch.ones_like(ids))
    logp = out.logits[:, :-1].log_softmax(-1)
    nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    nll = torch.nn.functional.dropout(nll, p=0.2, training=True)  # torch global RNG again
    entropy = -(logp.exp() * logp).sum(-1).mean()
    scale = 1.0 + run.generators["coin"].random()  # named Python generator
    loss = scale * nll.mean() + ((out.values - value_targets) ** 2).mean() + run.kl.value * entropy
    run.optimizer.zero_grad()
    loss.backward()
    run.optimizer.step()
    run.kl.update(nll.mean().item(), n_steps=4)
    run.step += 1


def draws(generators) -> list:
    """The next draw of every RNG (global and named)."""
    return [
        torch.rand(3).tolist(),
        np.random.rand(3).tolist(),
        random.random(),
        generators["minibatch"].random(),
        torch.rand(2, generator=generators["noise"]).tolist(),
        generators["coin"].random(),
    ]


def params(policy):
    return {k: v.detach().clone() for k, v in policy.state_dict().items()}


@pytest.mark.parametrize("separate_critic", [False, True])
def test_resume_equals_uninterrupted(tok, tmp_path, separate_critic):
    data = torch.randint(0, len(tok), (12, 10), generator=torch.Generator().manual_seed(7))
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    run = make_run(tok, seed=0, separate_critic=separate_critic)
    for _ in range(3):
        train_step(run, data)
    save_checkpoint(
        tmp_path / "step_3",
        policy=run.policy,
        optimizer=run.optimizer,
        kl_controller=run.kl,
        reward=run.reward,
        counters={"step": run.step},
        extra={"note": "k=3"},
        generators=run.generators,
        tokenizer=tok,
    )
    saved = params(run.policy)
    for _ in range(4):
        train_step(run, data)
    expected_params, expected_draws = params(run.policy), draws(run.generators)

    torch.manual_seed(99), np.random.seed(99), random.seed(99)  # scramble the global RNGs
    fresh = make_run(tok, seed=1, separate_critic=separate_critic)
    assert not torch.equal(
        fresh.policy.model.transformer.h[0].mlp.dense_h_to_4h.weight,
        saved["model.transformer.h.0.mlp.dense_h_to_4h.weight"],
    )
    state = load_checkpoint(
        tmp_path / "step_3",
        policy=fresh.policy,
        optimizer=fresh.optimizer,
        kl_controller=fresh.kl,
        reward=fresh.reward,
        generators=fresh.generators,
    )
    fresh.step = state.counters["step"]
    assert state.counters == {"step": 3} and state.extra == {"note": "k=3"} and state.rng_restored
    assert all(torch.equal(v, saved[k]) for k, v in params(fresh.policy).items())
    if separate_critic:
        assert any(k.startswith("critic.") for k in saved)
    for _ in range(4):
        train_step(fresh, data)
    assert fresh.step == run.step == 7
    assert fresh.kl.value == run.kl.value and fresh.kl.value != 1.1  # adaptive value restored, then updated
    assert fresh.reward.state_dict() == run.reward.state_dict()
    for key, value in expected_params.items():
        assert torch.equal(params(fresh.policy)[key], value), key
    assert draws(fresh.generators) == expected_draws


def test_policy_and_tokenizer_load_with_plain_transformers(tok, tmp_path):
    policy = tiny(tok, seed=3)
    path = save_checkpoint(tmp_path / "ck", policy=policy, tokenizer=tok)
    model = AutoModelForCausalLM.from_pretrained(path / "policy")
    ids = torch.tensor([[3, 17, 42, 8, 99]])
    # the plain model has BLOOM's own GELU module, the policy the fused kernel of the same function: rounding apart
    torch.testing.assert_close(model(ids).logits, policy.model(ids).logits)
    fuse_gelu_modules(model)
    torch.testing.assert_close(model(ids).logits, policy.model(ids).logits, rtol=0, atol=0)
    loaded_tok = AutoTokenizer.from_pretrained(path / "policy")
    assert loaded_tok("a castle at night")["input_ids"] == tok("a castle at night")["input_ids"]
    reloaded = PolicyWithValue.from_pretrained(path / "policy")
    mask = torch.ones_like(ids)
    assert torch.equal(reloaded(ids, mask).values, policy(ids, mask).values)


def test_meta_and_layout(tok, tmp_path):
    policy = tiny(tok)
    opt = torch.optim.AdamW(policy.parameters())
    path = save_checkpoint(tmp_path / "step_1", policy=policy, optimizer=opt, counters={"step": 1})
    meta = json.loads((path / "meta.json").read_text())
    assert (
        meta["format_version"] == FORMAT_VERSION
        and meta["promptgym_version"] == version("promptgym")
        and meta["created"]
    )
    on_disk = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()} - {"meta.json"}
    assert set(meta["files"]) == on_disk
    assert {
        "policy/model.safetensors",
        "policy/config.json",
        "optimizer.json",
        "trainer_state.json",
        "rng.json",
        "rng.safetensors",
    } <= on_disk
    assert not any(p.suffix in {".pt", ".pkl", ".bin"} for p in path.rglob("*"))
    assert (tmp_path / "latest").read_text().strip() == "step_1"


def _step(opt, params):
    opt.zero_grad()
    sum((p**2).sum() for p in params).backward()
    opt.step()


def _assert_same_state(a, b):
    """Exact equality of nested optimizer state dicts, types and dtypes included."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            _assert_same_state(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same_state(x, y)
    else:
        assert a == b or (a != a and b != b)


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: torch.optim.AdamW(ps, lr=1e-3, betas=(0.8, 0.95)),
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
        lambda ps: torch.optim.SGD(ps, lr=0.1),
    ],
)
@pytest.mark.parametrize("n_steps", [0, 2])
def test_optimizer_state_roundtrip_is_exact(tmp_path, make, n_steps):
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    opt = make(params)
    for _ in range(n_steps):
        _step(opt, params)
    ckpt._write_pair(tmp_path, "optimizer", opt.state_dict())
    _assert_same_state(ckpt._read_pair(tmp_path, "optimizer", "cpu", what="optimizer"), opt.state_dict())
    fresh = make([torch.nn.Parameter(p.detach().clone()) for p in params])
    fresh.load_state_dict(ckpt._read_pair(tmp_path, "optimizer", "cpu", what="optimizer"))
    _assert_same_state(fresh.state_dict(), opt.state_dict())


def test_optimizer_tensor_keys_and_float_step(tmp_path):
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    opt = torch.optim.AdamW(params)
    _step(opt, params)
    from safetensors.torch import load_file

    ckpt._write_pair(tmp_path, "tensor_step", opt.state_dict())
    keys = set(load_file(tmp_path / "tensor_step.safetensors"))
    assert keys == {f"state.{i}.{n}" for i in (0, 1) for n in ("step", "exp_avg", "exp_avg_sq")}
    state = opt.state_dict()
    state["state"][0]["step"] = 1.0  # older torch / some loaders keep the step as a Python float
    ckpt._write_pair(tmp_path, "float_step", state)
    decoded = ckpt._read_pair(tmp_path, "float_step", "cpu", what="optimizer")
    assert type(decoded["state"][0]["step"]) is float and decoded["state"][1]["step"].dtype == torch.float32
    assert decoded["param_groups"][0]["betas"] == (0.9, 0.999) and isinstance(
        decoded["param_groups"][0]["betas"], tuple
    )


def test_rng_restore_and_generator_errors(tok, tmp_path):
    gens = {"np": np.random.default_rng(5), "torch": torch.Generator().manual_seed(5), "py": random.Random(5)}
    path = save_checkpoint(tmp_path / "ck", policy=tiny(tok), generators=gens)
    first = draws({"minibatch": gens["np"], "noise": gens["torch"], "coin": gens["py"]})
    load_checkpoint(path, generators=gens)
    assert draws({"minibatch": gens["np"], "noise": gens["torch"], "coin": gens["py"]}) == first
    with pytest.raises(ValueError, match=r"generators\['other'\]"):
        load_checkpoint(path, generators={"other": np.random.default_rng(0)})
    with pytest.raises(ValueError, match=r"generators\['np'\] \(torch\)"):
        load_checkpoint(path, generators={"np": torch.Generator()})
    with pytest.raises(TypeError, match=r"generators\['bad'\] is a int"):
        save_checkpoint(tmp_path / "ck2", policy=tiny(tok), generators={"bad": 3})
    assert not (tmp_path / "ck2").exists()


def _save(tok, path, step, **kwargs):
    policy = tiny(tok, seed=step)
    return save_checkpoint(
        path, policy=policy, optimizer=torch.optim.AdamW(policy.parameters()), counters={"step": step}, **kwargs
    )


def _hidden(tmp_path):
    return [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("target", ["step_2", "step_1"])  # a new name, and overwriting the existing checkpoint
def test_crash_mid_write_keeps_previous_checkpoint(tok, tmp_path, monkeypatch, target):
    _save(tok, tmp_path / "step_1", 1)
    before = params(tiny(tok, seed=1))
    real = ckpt._write_pair

    def crash_on_rng(folder, name, obj):
        if name == "rng":
            (folder / "rng.json").write_text("{half")  # half-written file, then the "crash"
            raise OSError("disk full")
        real(folder, name, obj)

    monkeypatch.setattr(ckpt, "_write_pair", crash_on_rng)
    with pytest.raises(OSError, match="disk full"):
        _save(tok, tmp_path / target, 2)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_1"] and not _hidden(tmp_path)
    assert latest_checkpoint(tmp_path) == tmp_path / "step_1"
    fresh = tiny(tok, seed=9)
    assert load_checkpoint(tmp_path / "step_1", policy=fresh).counters == {"step": 1}
    assert all(torch.equal(v, before[k]) for k, v in params(fresh).items())


def test_failed_rename_during_overwrite_restores_old_checkpoint(tok, tmp_path, monkeypatch):
    _save(tok, tmp_path / "step_1", 1)
    real_replace = os.replace

    def failing_replace(src, dst):
        if os.path.basename(src).startswith(".tmp-"):
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        _save(tok, tmp_path / "step_1", 2)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "step_1").counters == {"step": 1} and not _hidden(tmp_path)


def test_overwrite_replaces_and_hard_crash_leftovers_are_ignored(tok, tmp_path):
    _save(tok, tmp_path / "step_1", 1)
    _save(tok, tmp_path / "step_1", 5)
    assert load_checkpoint(tmp_path / "step_1").counters == {"step": 5} and not _hidden(tmp_path)
    # A process killed mid-save leaves a hidden temp dir (possibly with meta.json); a foreign dir has no meta.
    leftover = tmp_path / ".tmp-step_9-deadbeef"
    (leftover / "policy").mkdir(parents=True)
    (leftover / "meta.json").write_text(json.dumps({"format_version": 1, "created_ns": 10**30, "files": {}}))
    (tmp_path / "step_8").mkdir()
    (tmp_path / "latest").unlink()
    assert list_checkpoints(tmp_path) == [tmp_path / "step_1"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step_1"
    (tmp_path / "latest").write_text("step_gone\n")  # stale pointer: fall back to scanning
    assert latest_checkpoint(tmp_path) == tmp_path / "step_1"
    assert latest_checkpoint(tmp_path / "missing") is None


def test_keep_last_prunes_oldest(tok, tmp_path):
    for step in range(1, 5):
        _save(tok, tmp_path / f"step_{step}", step, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_3", "step_4"] and not _hidden(tmp_path)
    assert latest_checkpoint(tmp_path) == tmp_path / "step_4"
    (tmp_path / "latest").write_text("step_3\n")  # the pointed-at checkpoint is never pruned
    assert prune_checkpoints(tmp_path, 1) == []
    with pytest.raises(ValueError, match="keep_last=0"):
        prune_checkpoints(tmp_path, 0)


def test_clear_errors(tok, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        load_checkpoint(missing)
    path = save_checkpoint(tmp_path / "ck", policy=tiny(tok, hidden_size=32))
    with pytest.raises(
        ValueError, match=r"tensor 'model\.transformer\.[\w.]+' has shape \(.*32.* policy's has shape \(.*16"
    ):
        load_checkpoint(path, policy=tiny(tok, hidden_size=16))
    with pytest.raises(ValueError, match="critic"):
        load_checkpoint(path, policy=tiny(tok, separate_critic=True))
    with pytest.raises(ValueError, match="optimizer was requested"):
        load_checkpoint(path, optimizer=torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1))
    with pytest.raises(ValueError, match="kl_controller was given"):
        load_checkpoint(path, kl_controller=AdaptiveKLController(0.1, 0.5, 10))
    with pytest.raises(ValueError, match="counters"):
        save_checkpoint(tmp_path / "ck2", policy=tiny(tok), counters={"step": "three"})
    with pytest.raises(ValueError, match="latest"):
        save_checkpoint(tmp_path / "latest", policy=tiny(tok))
    meta = json.loads((path / "meta.json").read_text())
    (path / "trainer_state.json").write_text("{}")  # damaged file: size no longer matches meta.json
    with pytest.raises(ValueError, match="damaged: trainer_state.json"):
        load_checkpoint(path)
    meta["format_version"] = FORMAT_VERSION + 1
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"format_version={FORMAT_VERSION + 1}.*upgrade promptgym"):
        load_checkpoint(path)
    (path / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match="no meta.json"):
        load_checkpoint(path)
