"""The study viewer in Jupyter (`interactive_viewer`): ipywidgets and IPython are imported only when it is
built, so the static figures (papermill, the Kaggle kernel) never need them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lumbar.analysis.viewer.draw import figure_png, plot_study
from lumbar.analysis.viewer.gather import StudyView


def interactive_viewer(study_ids: Sequence[int], load: Callable[[int], StudyView], max_offset: int = 3):
    """A dropdown over studies and a slider over slices (offset from each panel's reference slice) in Jupyter.

    Args:
        study_ids: the studies to choose from.
        load: study id -> `StudyView` (e.g. `functools.partial(load_study_view, run_dir=..., data_dir=...)`);
            each study is loaded once.
        max_offset: the slider's range, slices either side.

    Returns:
        The ipywidgets box (display it as a notebook cell's last expression).

    Raises:
        ImportError: ipywidgets is not installed (the static `plot_study` figures need nothing more).
    """
    import ipywidgets as widgets
    from IPython.display import Image, display

    studies = widgets.Dropdown(options=[int(s) for s in study_ids], description="study")
    offset = widgets.IntSlider(value=0, min=-max_offset, max=max_offset, description="slice offset")
    out = widgets.Output()
    loaded: dict[int, StudyView] = {}

    def render(*_) -> None:
        if studies.value not in loaded:
            loaded[studies.value] = load(studies.value)
        with out:
            out.clear_output(wait=True)
            display(Image(data=figure_png(plot_study(loaded[studies.value], offset.value))))

    studies.observe(render, names="value")
    offset.observe(render, names="value")
    render()
    return widgets.VBox([widgets.HBox([studies, offset]), out])


def widgets_available() -> bool:
    """Whether ipywidgets can be imported (the interactive viewer needs it; the static figures do not)."""
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True
