"""Inference: study -> 25 prediction rows; the submission validator and writer."""
