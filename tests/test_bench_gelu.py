"""The GELU benchmark: its main runs in-process with tiny settings and prints the table it promises."""

import re

import pytest
import torch
from transformers.models.bloom.modeling_bloom import BloomGelu

from promptgym.experiments.bench_gelu import PASSES, main, policies


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_two_policies_differ_only_in_their_gelu_modules():
    models = policies("synth")
    own, fused = models["own"], models["fused"]
    layers = own.config.n_layer
    assert layers == 4 and own.config.hidden_size == 64  # the synth config's policy
    assert sum(isinstance(m, BloomGelu) for m in own.modules()) == layers
    assert sum(isinstance(m, torch.nn.GELU) and m.approximate == "tanh" for m in fused.modules()) == layers
    assert not any(isinstance(m, BloomGelu) for m in fused.modules())
    for a, b in zip(own.state_dict().values(), fused.state_dict().values()):
        assert torch.equal(a, b)


def test_main_prints_every_pass_with_its_ratio(capsys):
    medians = main(["--batch", "2", "--context", "3", "--new-tokens", "2", "--rounds", "1"])
    out = capsys.readouterr().out.splitlines()
    assert set(medians) == {"own", "fused"} and all(ms > 0 for m in medians.values() for ms in m.values())
    assert re.match(r"policy 4 x 64 \(synth\), batch 2 x \(3 \+ 2\) tokens, torch threads 1, .*largest logit "
                    r"difference \d\.\de[-+]\d\d$", out[0])
    for name in PASSES:
        (line,) = [line for line in out if line.startswith(name)]
        ratio = float(re.findall(r"[\d.]+", line[len(name):])[-1])
        assert ratio == pytest.approx(medians["own"][name] / medians["fused"][name], abs=0.006)  # printed to 0.01


def test_bad_sizes_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--new-tokens", "0"])
    assert exit_info.value.code == 2 and "--new-tokens must be >= 1, got 0" in capsys.readouterr().err
