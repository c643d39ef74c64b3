"""Verifiable rewards for GRPO."""
