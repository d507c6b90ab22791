"""The shared-context benchmark: its main runs in-process and prints the table it promises; its switch really
turns sharing off and back on."""

import re

import pytest
import torch

from promptgym.agents import rollout
from promptgym.experiments.bench_context import PASSES, main, sharing


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_sharing_switch_turns_distinct_contexts_off_and_restores_it():
    ids = torch.tensor([[5, 6], [5, 6]])
    mask = torch.ones_like(ids)
    with sharing("every row"):
        assert rollout.distinct_contexts(ids, mask) is None
    first, inverse = rollout.distinct_contexts(ids, mask)
    assert first.tolist() == [0] and inverse.tolist() == [0, 0]
    with pytest.raises(RuntimeError), sharing("every row"):
        raise RuntimeError
    assert rollout.distinct_contexts(ids, mask) is not None  # restored after an error too
    with sharing("shared"):
        assert rollout.distinct_contexts(ids, mask) is not None


def test_main_prints_both_passes_and_ratios(capsys):
    medians = main(["--rounds", "1", "--threads", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert re.match(r"surrogate: 32 episodes = 8 tasks x 4 samples, context \d+ columns, \d+ written tokens", lines[0])
    assert float(re.search(r"largest output difference ([\d.e+-]+)", lines[0]).group(1)) < 1e-4  # rounding only
    for name in PASSES:
        (line,) = [line for line in lines if line.startswith(name)]
        alone, shared, ratio = (float(x) for x in re.findall(r"[\d.]+", line[len(name):]))
        assert alone == pytest.approx(medians["every row"][name], abs=0.051)
        assert shared == pytest.approx(medians["shared"][name], abs=0.051)
        assert ratio == pytest.approx(medians["every row"][name] / medians["shared"][name], abs=0.006)


@pytest.mark.parametrize("argv", [["--rounds", "0"], ["--threads", "-1"]])
def test_bad_options_are_rejected(argv, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert argv[0] in capsys.readouterr().err
