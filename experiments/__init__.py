"""Experiments: configs, the `promptgym` command line, training/eval/benchmark drivers, logging and plots."""

# The preset `promptgym train` and `load_config()` use: the grounded synth world, gold beside every proxy term,
# trained on the text-only surrogate of its image reward for 8,192 reward calls (README, learning item 19).
# (Here, not in config.py, so the command line can name it without importing torch.)
DEFAULT_CONFIG = "surrogate"
# The base of `promptgym bench`: the synth world's image reward, every variant at the same budget of reward calls.
BENCH_CONFIG = "synth"
