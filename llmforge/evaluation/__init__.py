"""Evaluation pieces the eval stage builds on: the bundled lm-eval tasks and the problems they hold, and the
contamination check that reads a model's lineage."""
