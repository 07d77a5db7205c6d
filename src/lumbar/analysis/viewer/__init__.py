"""Study viewer: one study with its label points, the localizer's points, the crops and the predictions.

Three parts, so the data can be checked without figures and the figures drawn without widgets: `gather`
(`load_study_view`: everything about one study, from the run folder or predicted now), `draw` (`plot_study`:
one static figure, safe under papermill) and `widgets` (`interactive_viewer`: a dropdown over studies and a
slider over slices in Jupyter; ipywidgets is imported only there). Notebooks import the names from here.
"""

from lumbar.analysis.viewer.draw import POINT_STYLE, figure_png, plot_study
from lumbar.analysis.viewer.gather import (
    LOCALIZER,
    PANEL_GROUPS,
    TRUTH,
    PanelGroup,
    SlicePanel,
    StudyView,
    build_panels,
    load_study_view,
)
from lumbar.analysis.viewer.widgets import interactive_viewer, widgets_available

__all__ = [
    "LOCALIZER",
    "PANEL_GROUPS",
    "POINT_STYLE",
    "TRUTH",
    "PanelGroup",
    "SlicePanel",
    "StudyView",
    "build_panels",
    "figure_png",
    "interactive_viewer",
    "load_study_view",
    "plot_study",
    "widgets_available",
]
