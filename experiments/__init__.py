"""Experiments: configs, the `promptgym` command line, training/eval/benchmark drivers, logging and plots."""
