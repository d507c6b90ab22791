"""Experiments: configs, the `promptgym` command line, training/eval/benchmark drivers, logging and plots."""

# The preset `promptgym train` and `load_config()` use: the grounded synth world, gold beside every proxy term.
# (Here, not in config.py, so the command line can name it without importing torch.)
DEFAULT_CONFIG = "synth"
