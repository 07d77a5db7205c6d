"""Evaluation: the competition metric, baselines, the thesis's classification reports and reference numbers,
the error analysis (per-target loss, calibration) and the study viewer."""
