"""PolicyWithValue: cached forward equals full forward, save/load round trips, the KL reference."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from promptgym.agents.policy import PolicyWithValue, cache_argument, forward_parameters, position_ids_from_mask
from promptgym.envs import default_tokenizer


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


def batch(tok):
    enc = tok(["a dog", "two red cats in a park, watercolor"], return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


def randomise_value_head(policy, seed=0):
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for p in policy.value_head.parameters():
            p.copy_(torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("separate_critic", [False, True])
def test_cached_steps_equal_full_forward(tok, separate_critic):
    policy = PolicyWithValue.tiny(tok, seed=1, separate_critic=separate_critic).eval()
    randomise_value_head(policy)
    ids, mask = batch(tok)
    new = torch.tensor([[5, 9, 11], [7, 8, 1]])
    with torch.no_grad():
        out = policy(ids, mask, use_cache=True)
        logits, values = [out.logits[:, -1]], [out.values[:, -1]]
        for t in range(new.shape[1] - 1):
            mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1)
            out = policy(new[:, t : t + 1], mask, cache=out.cache, use_cache=True)
            logits.append(out.logits[:, -1])
            values.append(out.values[:, -1])
        full = policy(torch.cat([ids, new[:, :-1]], 1), mask)
    n = new.shape[1]
    torch.testing.assert_close(torch.stack(logits, 1), full.logits[:, -n:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.stack(values, 1), full.values[:, -n:], atol=1e-5, rtol=1e-5)
    assert values[0].abs().sum() > 0  # the randomised head really contributes


def test_left_padding_does_not_change_outputs(tok):
    policy = PolicyWithValue.tiny(tok, seed=2).eval()
    randomise_value_head(policy)
    ids, mask = batch(tok)
    alone = tok(["a dog"], return_tensors="pt")
    with torch.no_grad():
        padded = policy(ids, mask)
        single = policy(alone.input_ids, alone.attention_mask)
    n = alone.input_ids.shape[1]
    torch.testing.assert_close(padded.logits[0, -n:], single.logits[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded.values[0, -n:], single.values[0], atol=1e-5, rtol=1e-5)


def test_position_ids_from_left_padded_mask():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert position_ids_from_mask(mask, past_length=4).tolist() == [[2], [4]]


@pytest.mark.parametrize("separate_critic", [False, True])
def test_save_and_load_round_trip(tok, tmp_path, separate_critic):
    policy = PolicyWithValue.tiny(tok, seed=3, separate_critic=separate_critic).eval()
    randomise_value_head(policy)
    policy.save_pretrained(tmp_path)
    loaded = PolicyWithValue.from_pretrained(tmp_path).eval()
    assert (loaded.critic is not None) == separate_critic
    ids, mask = batch(tok)
    with torch.no_grad():
        a, b = policy(ids, mask), loaded(ids, mask)
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.values, b.values)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path).eval()  # usable outside promptgym
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids, attention_mask=mask).logits, a.logits)


def test_reference_is_a_frozen_snapshot(tok):
    policy = PolicyWithValue.tiny(tok, seed=4)
    ids, mask = batch(tok)
    policy.freeze_reference()
    before = policy.reference_logits(ids, mask)
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(0.1)
    after = policy.reference_logits(ids, mask)
    torch.testing.assert_close(before, after)
    assert not torch.allclose(policy(ids, mask).logits, after)
    assert not any(p.requires_grad for p in policy._reference[0].parameters())
    assert not any(k.startswith("_reference") for k in policy.state_dict())


def test_peft_reference_disables_adapters_instead_of_copying(tok):
    peft = pytest.importorskip("peft")
    base = PolicyWithValue.tiny(tok, seed=5)
    ids, mask = batch(tok)
    with torch.no_grad():
        base_logits = base.model(input_ids=ids, attention_mask=mask).logits
    config = peft.LoraConfig(r=4, target_modules=["query_key_value"], init_lora_weights=False)
    policy = PolicyWithValue(peft.get_peft_model(base.model, config), value_head=base.value_head)
    assert policy.is_peft
    policy.freeze_reference()
    assert getattr(policy, "_reference", None) is None  # no second copy of the weights
    torch.testing.assert_close(policy.reference_logits(ids, mask), base_logits)
    assert not torch.allclose(policy(ids, mask).logits, base_logits)  # adapters active outside the context


def test_forward_parameters_match_inspect_and_follow_an_instance_forward(tok):
    import inspect

    model = PolicyWithValue.tiny(tok, seed=0).model
    assert forward_parameters(model) == frozenset(inspect.signature(model.forward).parameters)
    assert cache_argument(model) in forward_parameters(model)

    def forward(input_ids, attention_mask=None, past_key_values=None):  # set on the instance: not the class's
        raise AssertionError("not called")

    model.forward = forward
    assert forward_parameters(model) == {"input_ids", "attention_mask", "past_key_values"}
    assert cache_argument(model) == "past_key_values"


def _is_fused_gelu(module):
    return isinstance(module, torch.nn.GELU) and module.approximate == "tanh"


def test_fused_gelu_computes_the_models_own_tanh_gelu_forward_and_backward(tok):
    import copy

    from transformers.models.bloom.modeling_bloom import BloomGelu

    from promptgym.agents.policy import fuse_gelu_modules

    x = torch.cat([torch.linspace(-12, 12, 4001), torch.tensor([0.0, -1e4, 1e4, 3e-8])]).requires_grad_()
    y = x.detach().clone().requires_grad_()
    own, fused = BloomGelu()(x), torch.nn.GELU(approximate="tanh")(y)
    reference = 0.5 * x.detach().double() * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x.detach().double() + 0.044715 * x.detach().double() ** 3)))
    torch.testing.assert_close(fused.double(), reference, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(own.double(), reference, rtol=1e-6, atol=1e-6)
    own.sum().backward(), fused.sum().backward()
    torch.testing.assert_close(y.grad, x.grad, rtol=1e-5, atol=1e-5)

    exact = PolicyWithValue.tiny(tok, seed=2)  # fused by default
    assert not any(isinstance(m, BloomGelu) for m in exact.modules())
    assert sum(_is_fused_gelu(m) for m in exact.modules()) == exact.config.n_layer
    unfused = PolicyWithValue(copy.deepcopy(exact.model), fuse_gelu=False)
    for layer in unfused.model.transformer.h:
        layer.mlp.gelu_impl = BloomGelu()  # the architecture's own module, as from_pretrained builds it
    assert fuse_gelu_modules(copy.deepcopy(unfused.model)) == exact.config.n_layer
    assert PolicyWithValue(unfused.model, fuse_gelu=False).model is unfused.model
    assert sum(isinstance(m, BloomGelu) for m in unfused.modules()) == exact.config.n_layer  # left alone
    ids, mask = batch(tok)
    outputs = [policy(ids, mask) for policy in (exact, unfused)]
    torch.testing.assert_close(outputs[0].logits, outputs[1].logits)
    for out in outputs:
        out.logits.logsumexp(-1).mean().backward()
    for a, b in zip(exact.model.parameters(), unfused.model.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)


def test_fuse_gelu_modules_covers_gpt2_and_the_separate_critic(tok):
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.activations import NewGELUActivation

    from promptgym.agents.policy import fuse_gelu_modules

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tok), activation_function="gelu_new"))
    assert sum(isinstance(m, NewGELUActivation) for m in gpt2.modules()) == 2
    assert fuse_gelu_modules(gpt2) == 2 and fuse_gelu_modules(gpt2) == 0  # idempotent
    assert sum(_is_fused_gelu(m) for m in gpt2.modules()) == 2
    policy = PolicyWithValue.tiny(tok, seed=0, separate_critic=True)
    assert sum(_is_fused_gelu(m) for m in policy.critic.modules()) == policy.config.n_layer
