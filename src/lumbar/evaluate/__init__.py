"""Evaluation: the competition metric, baselines, the thesis's classification reports and reference numbers."""
