"""Agents for prompt editing: policy with value head, sampling, rollouts, PPO, SFT and baselines."""
