"""The control panel: a chapter's controls, a Run button and the figure in place.

A chapter builds its panel from three pieces: the controls (`flbook.widgets.standard_controls()` plus any
knobs of its own), a `run` function of the controls' values that returns a history DataFrame (or yields the
history so far, more than once, so the figure appears before every run has finished), and a `plot` function of
that history that returns a figure:

    panel = control_panel(run=compare_run(), controls=standard_controls(rounds=10), plot=plots.accuracy_figure)
    panel                                 # in a notebook: the controls, a Run button and an output area
    panel.controls["alpha"].value = 0.1   # the same from code, as the tests do
    panel.on_run()                        # what Run does; the result is in panel.history and panel.figure
"""
from __future__ import annotations

import html
import time
from typing import Callable, Iterator, Mapping

import ipywidgets as W
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display
from matplotlib.figure import Figure

from ..rounds import DivergenceError

USER_ERRORS = (ValueError, FileNotFoundError, DivergenceError)  # shown as a one-line message, not a traceback
DONE_CLASS = "flbook-done"  # on the panel box once a run has finished, so browser tests can wait for it

Run = Callable[[dict], pd.DataFrame | Iterator[pd.DataFrame]]


class ControlPanel:
    """Controls, a Run button and an output area; `on_run` trains with the controls' values and draws the result.

    Display it as the last expression of a cell. CSS classes for browser tests: `flbook-panel` (the box,
    plus `flbook-done` once a run has finished), `flbook-run` (the button), `flbook-output`, and
    `flbook-control-<key>` on each control."""

    def __init__(self, run: Run, controls: Mapping[str, W.Widget], plot: Callable[[pd.DataFrame], Figure],
                 title: str = ""):
        self.run, self.plot, self.controls, self.title = run, plot, dict(controls), title
        self.history: pd.DataFrame | None = None  # the last run's result
        self.figure: Figure | None = None  # the last run's figure (closed after display)
        self.error: str | None = None  # the last run's user-error message
        self.first_figure_s: float | None = None  # seconds from Run to the last run's first figure
        for key, control in self.controls.items():
            control.add_class(f"flbook-control-{key}")
        grid = W.GridBox(list(self.controls.values()), layout=W.Layout(
            grid_template_columns="repeat(auto-fill, minmax(300px, 1fr))", grid_gap="2px 16px"))
        self.button = W.Button(description="Run", button_style="primary", icon="play")
        self.button.add_class("flbook-run")
        self.button.on_click(self.on_run)
        self.output = W.Output()
        self.output.add_class("flbook-output")
        header = [W.HTML(f"<b>{html.escape(title)}</b>")] if title else []
        self.box = W.VBox([*header, grid, self.button, self.output])
        self.box.add_class("flbook-panel")

    def values(self) -> dict:
        """The controls' current values, by key."""
        return {key: control.value for key, control in self.controls.items()}

    def on_run(self, button: W.Button | None = None) -> None:
        """The Run button's callback: train with the current values, keep the history, draw its figure (redrawn
        each time a streaming `run` yields a longer history).

        Expected user errors (a bad value, a missing dataset file, divergence) become a one-line message
        in the output and `self.error`; any other exception propagates so a broken run is noticed."""
        self.box.remove_class(DONE_CLASS)
        self.button.disabled = True
        self.output.clear_output()
        self.history = self.figure = self.error = self.first_figure_s = None
        failure = None
        start = time.perf_counter()
        try:
            with self.output:
                try:
                    result = self.run(self.values())
                    for history in [result] if isinstance(result, pd.DataFrame) else result:
                        self.draw(history)
                        if self.first_figure_s is None:
                            self.first_figure_s = time.perf_counter() - start
                except USER_ERRORS as err:
                    self.error = f"{type(err).__name__}: {err}"
                    print(f"Cannot run: {self.error}")
                except Exception as err:
                    failure = err
                    raise  # in a kernel the output area shows the traceback and swallows it; raised again below
        finally:
            self.button.disabled = False
            self.box.add_class(DONE_CLASS)
        if failure is not None:
            raise failure

    def draw(self, history: pd.DataFrame) -> None:
        """Replace the figure in the output area by `plot(history)`."""
        self.history, self.figure = history, self.plot(history)
        self.output.clear_output(wait=True)
        display(self.figure)
        plt.close(self.figure)

    def _repr_mimebundle_(self, **kwargs) -> dict:
        """Display as the panel's widget box; plain-text viewers get a one-line note instead."""
        return {**self.box._repr_mimebundle_(**kwargs),
                "text/plain": f"Control panel {self.title!r}: open the notebook in Jupyter and press Run."}


def control_panel(run: Run, controls: Mapping[str, W.Widget], plot: Callable[[pd.DataFrame], Figure],
                  title: str = "") -> ControlPanel:
    """A panel that runs `run(values)` when Run is pressed and shows `plot(history)` below the controls; a `run`
    that yields histories redraws the figure after each."""
    return ControlPanel(run, controls, plot, title)
