"""The one training engine: `train(config)` for every architecture and task mode, `predict_cache` for
inference."""

from lumbar.train.config import TrainConfig, make_config
from lumbar.train.loop import TrainResult, train
from lumbar.train.predict import predict_cache

__all__ = ["TrainConfig", "TrainResult", "make_config", "predict_cache", "train"]
