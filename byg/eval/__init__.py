"""Evaluation: the toy oracle and metrics; VLM judges."""
