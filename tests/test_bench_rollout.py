"""The rollout benchmark: its main runs in-process with tiny settings and prints the table it promises."""

import re

import pytest
import torch

from promptgym.experiments import bench_rollout
from promptgym.experiments.bench_rollout import (
    EOS_BIAS,
    TARGETS,
    TARGETS_WITH_REFERENCE,
    VARIANTS,
    eos_blocked,
    main,
    make_bench,
)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread (the tiny model gains nothing from more, and loses much on a busy machine); main(--threads)
    changes the process-wide count, so put it back afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_main_prints_every_variant_and_ratio(capsys):
    batch, new_tokens = 4, 4
    result = main(["--batch", str(batch), "--new-tokens", str(new_tokens), "--rounds", "3", "--threads", "1",
                   "--samples-per-task", "2"])
    lines = capsys.readouterr().out.splitlines()

    assert set(result.rates) == set(VARIANTS) and all(rate > 0 for rate in result.rates.values())
    assert re.fullmatch(r"torch threads: 1 \(torch's default on this machine: \d+\)", lines[0])
    assert re.match(
        r"batch 4 x 4 new tokens \| 2 tasks x 2 samples \| context \d+ columns \| typical_mass None \| median of 3 rounds", lines[1]
    )
    for name in VARIANTS:  # "<name> <tokens/s> <tokens/run>", tokens/run = batch x new_tokens for every variant
        (line,) = [line for line in lines if re.match(rf"{name}\s+[\d,]+\s+\d+$", line)]
        rate, count = line[len(name) :].split()
        assert int(count) == batch * new_tokens, line
        assert float(rate.replace(",", "")) == pytest.approx(result.rates[name], abs=0.5)  # rounded to whole tokens/s
    # collector, bare loop and naive loop share the sampler, seed and model, so they must draw the same tokens;
    # generate() samples with torch.multinomial (same distribution, other draws)
    same = r"same tokens as the bare loop \(same seed\): collector yes, bare loop yes, generate (yes|no), naive yes"
    assert any(re.fullmatch(same, line) for line in lines)
    (line,) = [line for line in lines if line.startswith("KL reference pass (run by PPOAgent.collect after the collector): ")]
    share = float(re.search(r"(\d+)% of the collector's time", line).group(1))
    collector_seconds = batch * new_tokens / result.rates["collector"]
    assert share == pytest.approx(100 * result.reference_seconds / collector_seconds, abs=0.51)
    assert result.reference_seconds * 1e3 == pytest.approx(float(re.search(r": ([\d.]+) ms", line).group(1)), abs=0.06)
    for name, target in TARGETS.items():
        (line,) = [line for line in lines if line.startswith(f"collector / {name}")]
        ratio = float(re.search(r":\s+([\d.]+)x", line).group(1))
        with_reference = float(re.search(r"with the reference pass ([\d.]+)x", line).group(1))
        assert ratio == pytest.approx(result.ratios[name], abs=0.006)
        assert with_reference == pytest.approx(result.ratios_with_reference[name], abs=0.006)
        assert with_reference < ratio  # adding the reference pass can only make the collector slower
        assert f"target >= {target:g}x" in line
        # the verdict is taken on the unrounded ratio (0.998 prints as 1.00x but misses a 1x target)
        assert ("ok" if result.ratios[name] >= target else "MISSED") in line
        if name in TARGETS_WITH_REFERENCE:
            target = TARGETS_WITH_REFERENCE[name]
            verdict = "ok" if result.ratios_with_reference[name] >= target else "MISSED"
            assert line.endswith(f"with the reference pass {with_reference:.2f}x (target >= {target:g}x) {verdict}")


def test_quick_flag_runs_the_tiny_settings(capsys, monkeypatch):
    seen = {}

    def fake_measure(bench, rounds, clock):  # the timing loop itself is covered above; here only the settings
        seen.update(batch=bench.input_ids.shape[0], new_tokens=bench.new_tokens, rounds=rounds, clock=clock)
        samples = {name: torch.zeros(bench.input_ids.shape[0], bench.new_tokens) for name in VARIANTS}
        ones = {name: 1.0 for name in TARGETS}
        return bench_rollout.Result({name: 1.0 for name in VARIANTS}, ones, ones, 0.1, samples)

    monkeypatch.setattr(bench_rollout, "measure", fake_measure)
    main(["--quick", "--threads", "1"])
    assert seen == {"batch": 4, "new_tokens": 4, "rounds": 1, "clock": "cpu"}  # CPU time unless asked
    out = capsys.readouterr().out
    assert "batch 4 x 4 new tokens" in out and out.splitlines()[1].endswith("| cpu time")
    main(["--quick", "--threads", "1", "--clock", "wall"])
    assert seen["clock"] == "wall" and capsys.readouterr().out.splitlines()[1].endswith("| wall time")


@pytest.mark.parametrize("clock", ["cpu", "wall"])
def test_measure_times_with_the_chosen_clock(monkeypatch, clock):
    """Every timed run reads the chosen clock (and only it) before and after."""
    calls = {"cpu": 0, "wall": 0}

    def counting(name, real):
        def now():
            calls[name] += 1
            return real()
        return now

    monkeypatch.setattr(bench_rollout, "CLOCKS", {name: counting(name, real) for name, real in bench_rollout.CLOCKS.items()})
    rounds = 2
    bench_rollout.measure(make_bench(2, 2), rounds, clock)
    assert calls == {clock: 2 * rounds * (len(VARIANTS) + 1), ("wall" if clock == "cpu" else "cpu"): 0}


@pytest.mark.parametrize("argv", [["--batch", "0"], ["--rounds", "-1"], ["--threads", "-1"], ["--typical-mass", "1.5"],
                                  ["--clock", "gpu"], ["--samples-per-task", "3"], ["--samples-per-task", "0"]])
def test_bad_options_are_rejected(argv, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert argv[0] in capsys.readouterr().err


def test_eos_blocked_changes_only_the_eos_logit_of_a_copy():
    bench = make_bench(batch=2, new_tokens=2)
    original = bench_rollout.PolicyWithValue.tiny(bench.env.tokenizer, seed=0).eval()
    eos = bench.env.episodes.eos_id
    blocked = eos_blocked(original, eos).eval()
    with torch.no_grad():
        before = original(bench.input_ids, bench.attention_mask).logits
        after = blocked(bench.input_ids, bench.attention_mask).logits
    assert original.model.lm_head.bias is None  # the original policy is untouched
    expected = before.clone()
    expected[..., eos] += EOS_BIAS
    torch.testing.assert_close(after, expected)
    assert after.softmax(-1)[..., eos].max() == 0.0  # never sampled


def test_baselines_sample_the_same_full_length_tokens():
    """Same model, contexts, seed and sampler: collector, cached loop and naive loop draw identical tokens, so they
    do the same work; no variant ever samples EOS. (The untrained tiny model is near-uniform, so this is no fine
    check of the KV cache: test_rollout compares log-probs for that.)"""
    bench = make_bench(batch=6, new_tokens=5, seed=2, samples_per_task=3)
    assert [id(task) for task in bench.env.tasks[:3]] == [id(bench.env.tasks[0])] * 3 != [id(bench.env.tasks[3])] * 3
    assert torch.equal(bench.input_ids[0], bench.input_ids[2]) and not torch.equal(bench.input_ids[0], bench.input_ids[3])
    tokens = {name: run(bench) for name, run in VARIANTS.items()}
    for name, sampled in tokens.items():
        assert sampled.shape == (6, 5), name
        assert not (sampled == bench.env.episodes.eos_id).any(), name
    assert torch.equal(tokens["collector"], tokens["bare loop"])
    assert torch.equal(tokens["naive"], tokens["bare loop"])
