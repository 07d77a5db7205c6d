"""Synthetic studies in the competition's exact format, with anatomy in which every label is visible.

`generate(out, SynthConfig(...))` (or `python -m lumbar synth`) writes a data folder the package's loaders
read like the real one. Modules: `labels` (grades, label noise, the oracle), `anatomy` (the phantom),
`geometry` (scanner planes), `render` (images), `dicom_writer` (files), `study` (one study), `generate`
(the folder), `figure` (the documentation picture).
"""

from lumbar.data.synthetic.generate import LABEL_NOISE_CSV, MANIFEST, Summary, SynthConfig, generate
from lumbar.data.synthetic.labels import LabelModel

__all__ = ["LABEL_NOISE_CSV", "MANIFEST", "LabelModel", "Summary", "SynthConfig", "generate"]
