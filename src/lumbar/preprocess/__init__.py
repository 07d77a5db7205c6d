"""Region-of-interest tensors: coordinates (ground truth or predicted) in, a cache of float16 crops out.

Modules, one responsibility each:
    config     `RoiConfig`: every parameter, typed defaults, checked overrides
    windows    crop geometry (mm or thesis pixel margins), slice windows, resampling
    intensity  per-volume 1-99 percentile clip to [0, 1]
    filters    filter registry (`none`, `mean_median`, `median`, `gaussian`, `clahe`, `hist_eq`, `unsharp`)
    roi        one study's samples: read each series once, decode only the needed slices
    cache      the cache folder (params.json, samples.parquet, failures.csv, .npy), parallel build, command
    jitter     the final window of a stored sample: `center_window`, `random_window`, and shifts drawn from
               a localizer's measured errors (`LocalizerJitter`, `write_localizer_errors`)
"""

from lumbar.preprocess.cache import build_cache, cache_name, load_cache, load_sample
from lumbar.preprocess.config import RoiConfig
from lumbar.preprocess.jitter import LocalizerJitter, center_window, random_window, write_localizer_errors

__all__ = [
    "LocalizerJitter",
    "RoiConfig",
    "build_cache",
    "cache_name",
    "center_window",
    "load_cache",
    "load_sample",
    "random_window",
    "write_localizer_errors",
]
