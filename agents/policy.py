"""`PolicyWithValue`: any transformers causal LM plus a value head, and its frozen reference for the KL.

The value head reads the policy's last hidden state (one shared trunk, as in TRL's value-head models), or,
when a separate `critic` trunk is given, that trunk's last hidden state. `forward` returns next-token
logits and values at every position and passes the KV cache through, so a rollout feeds one token per step.

The reference model for the KL penalty is a frozen copy of the policy's LM, or, when the LM is a PEFT/LoRA
model, the same weights with the adapters disabled (one copy of the weights in memory).

`fuse_gelu_modules` swaps the Python tanh-GELU modules of BLOOM (`BloomGelu`, a custom autograd function of eight
element-wise ops each way) and GPT-2 (`NewGELUActivation`) for `torch.nn.GELU(approximate="tanh")`, torch's one
fused kernel of the same function (rounding differs by ~1e-7). On the tiny policies those element-wise ops are a
large share of a forward and backward pass; `PolicyWithValue(..., fuse_gelu=True)`, the default, applies it
(`python -m promptgym.experiments.bench_gelu` measures it).
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, BloomConfig, BloomForCausalLM, PreTrainedModel
from transformers.activations import NewGELUActivation
from transformers.models.bloom.modeling_bloom import BloomGelu

VALUE_HEAD_FILE = "value_head.safetensors"
CRITIC_DIR = "critic"
CONFIG_FILE = "promptgym_policy.json"


@dataclass
class PolicyOutput:
    """logits[B, S, V] (next-token logits at each position), values[B, S], cache (the key/value cache, or None)."""

    logits: torch.Tensor
    values: torch.Tensor
    cache: Any = None

    def last_position_rows(self, index: torch.Tensor) -> PolicyOutput:
        """The output for batch rows `index` (repeats allowed), of the last position only (logits[len(index), 1, V],
        values[len(index), 1]) and with the cache's rows selected likewise (in place: this output's cache is
        consumed). How one prefill of each distinct context serves every row that shares it."""
        cache = None if self.cache is None else select_cache_rows(self.cache, index)
        return PolicyOutput(self.logits[index, -1:], self.values[index, -1:], cache)


def select_cache_rows(cache: Any, index: torch.Tensor) -> Any:
    """`cache` (a `PolicyOutput.cache`: one model's key/value cache, or the (LM, critic) pair of caches) keeping the
    batch rows `index`, repeats allowed; transformers' `Cache` objects are changed in place and returned."""
    if isinstance(cache, tuple):
        return tuple(select_cache_rows(part, index) for part in cache)
    cache.batch_select_indices(index)
    return cache


class ValueHead(nn.Module):
    """V(s) = w·h + b on a trunk's last hidden state h[..., H]."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.summary.weight)  # start from V = 0: no bias before the first update
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)


def position_ids_from_mask(attention_mask: torch.Tensor, past_length: int = 0) -> torch.Tensor:
    """Positions of left-padded sequences: count of real tokens before each one (padding gets 0)."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp(min=0)[:, past_length:]


TANH_GELU_MODULES = (BloomGelu, NewGELUActivation)  # 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))) in Python ops


def fuse_gelu_modules(module: nn.Module) -> int:
    """Replace every `TANH_GELU_MODULES` instance inside `module` (in place) by `nn.GELU(approximate="tanh")`,
    torch's fused kernel of the same tanh approximation; returns how many were replaced. No parameters change, so
    saved weights and `from_pretrained` are unaffected."""
    targets = [(parent, name) for parent in module.modules() for name, child in parent.named_children()
               if isinstance(child, TANH_GELU_MODULES)]
    for parent, name in targets:
        setattr(parent, name, nn.GELU(approximate="tanh"))
    return len(targets)


def _accepts_position_ids(model: nn.Module) -> bool:
    return "position_ids" in forward_parameters(model)


class PolicyWithValue(nn.Module):
    """A causal LM policy with a value head; `model` is any `AutoModelForCausalLM`-style model."""

    def __init__(self, model: PreTrainedModel, value_head: ValueHead | None = None, critic: nn.Module | None = None,
                 fuse_gelu: bool = True):
        """`fuse_gelu` (default): replace the tanh-GELU modules of `model` and `critic` in place by the fused
        kernel (module docstring); False keeps the models' own modules, for bit-exact comparisons."""
        super().__init__()
        if fuse_gelu:
            for trunk in (model, critic):
                if trunk is not None:
                    fuse_gelu_modules(trunk)
        self.model = model
        self.critic = critic
        trunk_config = (critic or model).config
        hidden = getattr(trunk_config, "hidden_size", None) or trunk_config.n_embd
        self.value_head = value_head or ValueHead(hidden)
        self._position_ids = _accepts_position_ids(model)
        self._critic_position_ids = critic is not None and _accepts_position_ids(critic)

    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> torch.device:
        """Where the policy's weights are (rollouts and PPO move their inputs here)."""
        return next(self.model.parameters()).device

    @property
    def is_peft(self) -> bool:
        return hasattr(self.model, "disable_adapter") and hasattr(self.model, "peft_config")

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: Any = None,
        use_cache: bool = False,
    ) -> PolicyOutput:
        """Logits and values for `input_ids[B, S]`; `attention_mask[B, past + S]` covers cached tokens too.

        `cache` is the `PolicyOutput.cache` of the previous call (with a separate critic: the pair of both caches).
        """
        lm_past, critic_past = cache if self.critic is not None and cache else (cache, None)
        out = _lm_forward(self.model, self._position_ids, input_ids, attention_mask, lm_past, use_cache, hidden=True)
        if self.critic is None:
            values = self.value_head(out.hidden_states[-1])
            return PolicyOutput(out.logits, values, output_cache(out) if use_cache else None)
        critic_out = _lm_forward(
            self.critic, self._critic_position_ids, input_ids, attention_mask, critic_past, use_cache, hidden=False
        )
        values = self.value_head(critic_out.last_hidden_state)
        past = (output_cache(out), output_cache(critic_out)) if use_cache else None
        return PolicyOutput(out.logits, values, past)

    def reference_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int = 0
    ) -> torch.Tensor:
        """Logits of the reference policy (PEFT: adapters disabled; else the frozen copy made by `freeze_reference`).

        `logits_to_keep > 0` computes only the last that many positions' logits (when the model supports it).
        """
        return self.reference_forward(input_ids, attention_mask, logits_to_keep=logits_to_keep).logits

    def reference_forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: Any = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
    ):
        """The reference LM's output (no gradient): `.logits`, and with `use_cache` its key/value cache
        (`output_cache`), which a later call continues with `cache`; `attention_mask[B, past + S]` as in `forward`."""
        if self.is_peft:
            with torch.no_grad(), self.model.disable_adapter():
                return _lm_forward(
                    self.model, self._position_ids, input_ids, attention_mask, cache, use_cache, False, logits_to_keep
                )
        if getattr(self, "_reference", None) is None:
            self.freeze_reference()
        with torch.no_grad():
            reference = self._reference[0]
            if next(reference.parameters()).device != input_ids.device:  # the policy was moved after the snapshot
                reference.to(input_ids.device)
            return _lm_forward(
                reference, self._position_ids, input_ids, attention_mask, cache, use_cache, False, logits_to_keep
            )

    def freeze_reference(self) -> None:
        """Snapshot the current LM as the KL reference (a no-op for PEFT models, which disable adapters)."""
        if self.is_peft:
            return
        reference = copy.deepcopy(self.model).eval()
        reference.requires_grad_(False)
        self._reference = [reference]  # a list, so the copy is not registered as a submodule or saved

    # ------------------------------------------------------------------ construction and persistence
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, critic: str | os.PathLike | None = None, **kwargs):
        """Load a causal LM (hub id or directory) and, if the directory has one, its saved value head/critic.

        A damaged weights or config file is a ValueError that names it (not a bare SafetensorError).
        """
        model = _named_load(AutoModelForCausalLM.from_pretrained, name_or_path, **kwargs)
        path = Path(name_or_path)
        critic_model = None
        if critic is not None:
            critic_model = _named_load(AutoModel.from_pretrained, critic, **kwargs)
        elif (path / CRITIC_DIR).is_dir():
            critic_model = _named_load(AutoModel.from_pretrained, path / CRITIC_DIR, **kwargs)
        policy = cls(model, critic=critic_model)
        if (path / VALUE_HEAD_FILE).is_file():
            policy.value_head.load_state_dict(_named_load(load_file, path / VALUE_HEAD_FILE))
        return policy

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Save the LM (loadable with plain `AutoModelForCausalLM.from_pretrained`), value head and critic."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory)
        save_file({k: v.contiguous() for k, v in self.value_head.state_dict().items()}, directory / VALUE_HEAD_FILE)
        if self.critic is not None:
            self.critic.save_pretrained(directory / CRITIC_DIR)
        (directory / CONFIG_FILE).write_text(json.dumps({"critic": self.critic is not None}, indent=2))

    @classmethod
    def tiny(
        cls,
        tokenizer,
        seed: int = 0,
        hidden_size: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        separate_critic: bool = False,
    ) -> PolicyWithValue:
        """A tiny randomly initialised BLOOM (the architecture of DiffChat's policy) matching `tokenizer`."""
        config = tiny_bloom_config(tokenizer, hidden_size, num_layers, num_heads)
        with _seeded(seed):  # the caller's global RNG stream is left as it was
            model = BloomForCausalLM(config)
            critic = BloomForCausalLM(config).transformer if separate_critic else None
            return cls(model, critic=critic)


def _named_load(load, name_or_path: str | os.PathLike, **kwargs):
    """`load(name_or_path, **kwargs)`, with an unreadable file's error (bad safetensors header, bad JSON) naming it."""
    try:
        return load(name_or_path, **kwargs)
    except (SafetensorError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{_damaged_file(Path(name_or_path))} is damaged and cannot be loaded: {error}") from None


def _damaged_file(path: Path) -> Path:
    """The first file under `path` (a file or a model directory) that safetensors or JSON cannot read, else `path`."""
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors")) + sorted(path.glob("*.json"))
    for file in files:
        try:
            if file.suffix == ".safetensors":
                with safe_open(file, framework="pt") as f:
                    for key in f.keys():
                        f.get_slice(key)
            else:
                json.loads(file.read_text(encoding="utf-8"))
        except (SafetensorError, ValueError):
            return file
    return path


def tiny_bloom_config(tokenizer, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4) -> BloomConfig:
    """A small `BloomConfig` whose vocabulary and special tokens match `tokenizer`."""
    return BloomConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        n_layer=num_layers,
        n_head=num_heads,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _lm_forward(model, takes_positions, input_ids, attention_mask, past, use_cache, hidden, logits_to_keep=0):
    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": use_cache}
    if logits_to_keep and "logits_to_keep" in forward_parameters(model):
        kwargs["logits_to_keep"] = logits_to_keep
    if past is not None:
        kwargs[cache_argument(model)] = past
    if takes_positions:
        kwargs["position_ids"] = position_ids_from_mask(attention_mask, attention_mask.shape[1] - input_ids.shape[1])
    if hidden:
        kwargs["output_hidden_states"] = True
    return model(**kwargs)


def forward_parameters(model) -> frozenset[str]:
    """The parameter names of `model.forward`, read once per class (the token loop asks on every step; cProfile put
    `inspect.signature` there at ~5% of a tiny-policy collect, though `bench_rollout` shows no measurable change)."""
    forward = getattr(type(model), "forward", None)
    if forward is None or "forward" in vars(model):  # a forward set on the instance: not the class's
        return frozenset(inspect.signature(model.forward).parameters)
    return _class_forward_parameters(forward)


@functools.lru_cache(maxsize=64)
def _class_forward_parameters(forward) -> frozenset[str]:
    return frozenset(inspect.signature(forward).parameters) - {"self"}


def cache_argument(model) -> str:
    """The name under which `model.forward` takes the key/value cache: `cache` since transformers 5.24 (which
    deprecates `past_key_values`), `past_key_values` before."""
    return "cache" if "cache" in forward_parameters(model) else "past_key_values"


def output_cache(out) -> Any:
    """The key/value cache a forward returned (`out.cache` since transformers 5.24, `out.past_key_values` before)."""
    return out["cache"] if "cache" in out else out.get("past_key_values")


@contextmanager
def _seeded(seed: int):
    """Seed torch's global generator for model construction without disturbing the caller's RNG stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
