"""What a reader sees in JupyterLab: every notebook runs without an error, and every control panel redraws.

nbval runs the cells but never sees what widget callbacks draw, nor whether the widget front end loads;
this test opens each notebook in headless Chromium, runs all cells, and works each control panel.
"""
from pathlib import Path

from playwright.sync_api import Page

from labdriver import Timeouts, change_one_control, open_notebook, run_panel, shorten_runs


def test_notebook_runs_and_its_panels_redraw(lab: Page, notebook: str, screenshots: Path):
    """Run all cells, then in each control panel: Run, change one control, Run again; the plot must change.

    The panel's runs are shortened to a few rounds: the test checks the controls reach the plot, not the results."""
    name = Path(notebook).stem
    with open_notebook(lab, notebook, Timeouts(), screenshots / f"{name}.failed.png") as nb:
        nb.run_all()
        errors = nb.errors()
        assert not errors, f"{notebook}: cells failed: " + "; ".join(errors)
        unrendered = nb.unrendered_widgets()
        assert not unrendered, f"{notebook}: widgets drawn as text (is jupyterlab_widgets installed?): {unrendered}"
        nb.screenshot(screenshots / f"{name}.png")
        panels = nb.panels()
        if nb.mentions("control_panel("):
            assert panels, f"{notebook}: builds a control panel, but none is drawn"
        for number, panel in enumerate(panels, 1):
            shorten_runs(panel)
            before = run_panel(nb, panel)
            change = change_one_control(panel)
            after = run_panel(nb, panel)
            panel.screenshot(path=str(screenshots / f"{name}.panel{number}.png"))
            assert after, f"{notebook}: panel {number} drew no plot after {change}"
            assert after != before, f"{notebook}: panel {number}'s plot did not change after {change}"
