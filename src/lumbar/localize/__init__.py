"""Level localizer: label coordinates predicted for studies without ground truth (the test set).

Output is the `train_label_coordinates.csv` format, so predicted and ground-truth coordinates feed the ROI
cache (`lumbar.preprocess`) alike. Three keypoint models (`tasks`), one per series type:

- `sag_t2`: Sagittal T2/STIR -> the 5 spinal-canal points and the slice each sits on;
- `sag_t1`: Sagittal T1 -> left and right foramen per level, each with its slice;
- `axial`: Axial T2 -> left and right subarticular points on the slice of each level, that slice chosen by
  `axial.map_axial` from the *predicted* spinal points (DICOM geometry, no ground truth).

Model (`heatmap`): a timm encoder with a small feature-pyramid decoder predicting, for every point, a 3D
heatmap over (slice, row, column) from a 2.5D input (a sagittal stack resampled to a fixed number of slices
as channels; an axial slice with its neighbours). Heatmaps rather than direct (x, y, z) regression because
the convolutional head is translation-equivariant: with a few dozen training studies and no pretrained
weights it reaches pixel accuracy where a regression head mostly learns the mean position.

Modules: `config` (typed settings), `tasks` (targets), `volumes` (inputs, cache), `heatmap` (network,
loss, decoding), `augment`, `train` (`python -m lumbar train-localizer`), `predict` (`localize`),
`evaluate` (`localize-eval`), `axial` (sagittal-to-axial mapping), `fit` (the training loop), `slice_refine`
(slice scorer).
"""
