"""Drive JupyterLab in a browser page as a reader would: open a notebook, run it, turn a control, press Run.

JupyterLab runs with `expose_app_in_browser`, so documents are opened, run and closed through its own
commands (`window.jupyterapp`); widgets are changed with the keyboard and the mouse like a person does.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from playwright.sync_api import Locator, Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout

VIEWPORT = {"width": 1280, "height": 900}
MAX_SCREENSHOT_HEIGHT = 16000  # Chromium's limit on a texture's side
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# Controls worth changing, best first: they change every algorithm's curves without making the run longer.
PREFERRED_CONTROLS = ("alpha", "seed", "lr", "sigma", "classes_per_client", "shards_per_client", "participation",
                      "local_steps")
SHORT_ROUNDS = 5  # the panel's runs in the test: enough for a curve, far fewer than a reader's default
RUN_FAILURES = ("Traceback (most recent call last)", "Cannot run:")  # an exception or a user error in the output

_NOTEBOOK = "window.__flbookNotebook"
_KERNEL_ERRORS = "window.__flbookKernelErrors"  # every error the kernel reports, a cell's or a callback's


@dataclass(frozen=True)
class Timeouts:
    """Seconds each step may take before it fails."""

    open: float = 60
    run_all: float = 240
    panel_run: float = 180


def start_lab(page: Page, base_url: str, timeout_s: float) -> None:
    """Load JupyterLab with a fresh workspace in `page` and fold the side bars away."""
    page.set_viewport_size(VIEWPORT)
    page.goto(f"{base_url}lab?reset", timeout=timeout_s * 1000)
    page.wait_for_function("() => window.jupyterapp !== undefined", timeout=timeout_s * 1000)
    page.evaluate("async () => { const app = window.jupyterapp; await app.restored;"
                  " app.shell.collapseLeft(); app.shell.collapseRight(); }")


class Notebook:
    """One notebook open in the page; `run_all`, then inspect its outputs and control panels."""

    def __init__(self, page: Page, path: str, timeouts: Timeouts):
        self.page, self.path, self.timeouts = page, path, timeouts
        page.evaluate(f"""async (path) => {{
            const nb = await window.jupyterapp.commands.execute('docmanager:open', {{path, factory: 'Notebook'}});
            {_NOTEBOOK} = nb;
            window.jupyterapp.shell.activateById(nb.id);
        }}""", path)
        self.wait(f"() => {_NOTEBOOK}.context.isReady && {_NOTEBOOK}.sessionContext.session?.kernel?.status === 'idle'",
                  timeouts.open, "the notebook to open and its kernel to start")
        page.evaluate(f"""() => {{
            {_KERNEL_ERRORS} = [];
            {_NOTEBOOK}.sessionContext.session.kernel.iopubMessage.connect((_, msg) => {{
                if (msg.header.msg_type === 'error') {_KERNEL_ERRORS}.push(`${{msg.content.ename}}: ${{msg.content.evalue}}`);
            }});
        }}""")
        self.node = page.locator(f'[id="{page.evaluate(f"{_NOTEBOOK}.id")}"]')

    def wait(self, predicate: str, timeout_s: float, what: str, arg: object = None) -> None:
        """Wait until the JavaScript `predicate` holds; fail naming `what` after `timeout_s`."""
        try:
            self.page.wait_for_function(predicate, arg=arg, timeout=timeout_s * 1000, polling=250)
        except PlaywrightTimeout as err:
            raise AssertionError(f"{self.path}: timed out after {timeout_s:.0f} s waiting for {what}") from err

    def run_all(self) -> None:
        """Clear every output, run all cells in the notebook's fresh kernel and wait for it to go idle."""
        self.page.evaluate(f"""async () => {{
            const app = window.jupyterapp;
            window.__flbookRunAll = {{done: false}};
            await app.commands.execute('notebook:clear-all-cell-outputs');
            app.commands.execute('notebook:run-all-cells').then(
                ok => {{ window.__flbookRunAll = {{done: true, ok}}; }},
                err => {{ window.__flbookRunAll = {{done: true, ok: false, error: String(err)}}; }});
        }}""")
        self.wait(f"() => window.__flbookRunAll.done && {_NOTEBOOK}.sessionContext.session?.kernel?.status === 'idle'",
                  self.timeouts.run_all, "all cells to run")

    def errors(self) -> list[str]:
        """The cells' error outputs, one line each; without any, the code cells that did not run."""
        return self.page.evaluate(f"""() => {{
            const code = {_NOTEBOOK}.content.widgets.map((cell, i) => [cell, i])
                .filter(([cell]) => cell.model.type === 'code' && cell.model.sharedModel.getSource().trim() !== '');
            const errors = code.flatMap(([cell, i]) => cell.model.outputs.toJSON()
                .filter(o => o.output_type === 'error').map(o => `cell ${{i}}: ${{o.ename}}: ${{o.evalue}}`));
            return errors.length ? errors
                : code.filter(([cell]) => cell.model.executionCount === null).map(([, i]) => `cell ${{i}}: not run`);
        }}""")

    def unrendered_widgets(self) -> list[str]:
        """Widget outputs drawn as plain text, which happens when the widget front-end extension is missing."""
        return self.page.evaluate(f"""(mime) => {_NOTEBOOK}.content.widgets.flatMap((cell, i) => {{
            if (cell.model.type !== 'code') return [];
            return cell.model.outputs.toJSON().flatMap((output, k) => {{
                if (!(output.data && mime in output.data)) return [];
                const shown = cell.outputArea.widgets[k]?.node.querySelector('.jp-OutputArea-output');
                return shown && shown.dataset.mimeType === 'text/plain' ? [`cell ${{i}}: ${{shown.innerText}}`] : [];
            }});
        }})""", WIDGET_VIEW)

    def mentions(self, text: str) -> bool:
        """Whether some code cell's source contains `text`."""
        return self.page.evaluate(f"""(text) => {_NOTEBOOK}.content.widgets.some(
            cell => cell.model.type === 'code' && cell.model.sharedModel.getSource().includes(text))""", text)

    def panels(self) -> list[Locator]:
        """The control panels drawn in the notebook, top to bottom."""
        return self.node.locator(".flbook-panel").all()

    def screenshot(self, path: Path) -> None:
        """Save the whole notebook as one PNG: the viewport grows to the notebook's height for the shot."""
        outer = self.node.locator(".jp-WindowedPanel-outer").first
        hidden = outer.evaluate("el => { el.scrollTop = 0; return el.scrollHeight - el.clientHeight; }")
        self.page.set_viewport_size({"width": VIEWPORT["width"],
                                     "height": min(MAX_SCREENSHOT_HEIGHT, VIEWPORT["height"] + hidden)})
        try:
            self.page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
            self.page.screenshot(path=str(path))
        finally:
            self.page.set_viewport_size(VIEWPORT)


@contextlib.contextmanager
def open_notebook(page: Page, path: str, timeouts: Timeouts, failure_screenshot: Path) -> Iterator[Notebook]:
    """Open `path`; on any failure save a screenshot of the page; always close it and stop its kernel."""
    try:
        yield Notebook(page, path, timeouts)
    except BaseException:
        with contextlib.suppress(Exception):
            page.screenshot(path=str(failure_screenshot))
        raise
    finally:
        close_notebook(page)


def close_notebook(page: Page) -> None:
    """Shut the open notebook's kernel down and close it without saving."""
    page.evaluate(f"""async () => {{
        const nb = {_NOTEBOOK};
        if (!nb || nb.isDisposed) return;
        await nb.sessionContext.shutdown();
        nb.context.model.dirty = false;
        nb.dispose();
    }}""")


# ------------------------------------------------------------------------------------------ control panels
def shorten_runs(panel: Locator) -> None:
    """Set the panel's "rounds" control, where it has one, to a few rounds so that the test's runs are quick."""
    handle = panel.locator(".flbook-control-rounds .noUi-handle")
    box = panel.locator(".flbook-control-rounds input[type=number]")
    if handle.count() and handle.is_visible():
        handle.focus()
        handle.press("Home")
        for _ in range(SHORT_ROUNDS):
            before = handle.get_attribute("aria-valuenow")
            if float(before) >= SHORT_ROUNDS:
                break
            handle.press("ArrowRight")
            if handle.get_attribute("aria-valuenow") == before:
                break
    elif box.count() and box.is_visible():
        box.fill(str(SHORT_ROUNDS))
        box.press("Enter")


def change_one_control(panel: Locator) -> str:
    """Change one visible slider, dropdown or number box of the panel (preferred keys first); describe it."""
    keys = panel.evaluate("""el => [...el.querySelectorAll('[class*="flbook-control-"]')]
        .filter(c => c.offsetParent !== null)
        .map(c => [...c.classList].find(k => k.startsWith('flbook-control-')).slice('flbook-control-'.length))""")
    ranked = sorted(keys, key=lambda k: PREFERRED_CONTROLS.index(k) if k in PREFERRED_CONTROLS else len(keys))
    for key in ranked:
        control = panel.locator(f".flbook-control-{key}").first
        change = _change_slider(control) or _change_dropdown(control) or _change_number(control)
        if change:
            return f"{key}: {change}"
    raise AssertionError(f"no slider, dropdown or number box to change among the panel's controls {keys}")


def _change_slider(control: Locator) -> str | None:
    """One arrow key on the slider's handle: right, or left where it is at its maximum."""
    handle = control.locator(".noUi-handle")
    if not handle.count():
        return None
    readout = control.locator(".widget-readout")
    shown = readout.inner_text if readout.count() else lambda: handle.get_attribute("aria-valuenow")
    before = shown()
    handle.focus()
    for key in ("ArrowRight", "ArrowLeft"):
        handle.press(key)
        if shown() != before:
            return f"{before} -> {shown()}"
    raise AssertionError(f"the slider {control} did not move with the arrow keys")


def _change_dropdown(control: Locator) -> str | None:
    """Select the option after the current one in a single-choice dropdown."""
    select = control.locator("select:not([multiple])")
    if not select.count():
        return None
    options = select.locator("option").all_inner_texts()
    if len(options) < 2:
        return None
    index = select.evaluate("el => el.selectedIndex")
    select.select_option(index=(index + 1) % len(options))
    return f"{options[index]} -> {options[(index + 1) % len(options)]}"


def _change_number(control: Locator) -> str | None:
    """Type the next integer into a number box and confirm with Enter."""
    box = control.locator("input[type=number]")
    if not box.count():
        return None
    before = box.input_value()
    after = str(int(float(before)) + 1)
    box.fill(after)
    box.press("Enter")
    return f"{before} -> {after}"


def run_panel(notebook: Notebook, panel: Locator) -> list[str]:
    """Press the panel's Run button, wait for that run to finish (`flbook-done` coming back), return its plots.

    A mutation observer records the panel's class changes from before the click, so a run that removes and
    restores `flbook-done` quickly is still seen, and an intermediate redraw is never taken for the result."""
    panel.evaluate("""el => {
        el.__flbookStates = [el.classList.contains('flbook-done')];
        el.__flbookObserver?.disconnect();
        el.__flbookObserver = new MutationObserver(
            () => el.__flbookStates.push(el.classList.contains('flbook-done')));
        el.__flbookObserver.observe(el, {attributes: true, attributeFilter: ['class']});
    }""")
    errors_before = notebook.page.evaluate(f"{_KERNEL_ERRORS}.length")
    panel.locator(".flbook-run").first.click(timeout=notebook.timeouts.panel_run * 1000)
    notebook.wait(f"""([el, errors]) => {_KERNEL_ERRORS}.length > errors
                       || el.__flbookStates.some((done, i) => done && el.__flbookStates.slice(0, i).includes(false))""",
                  notebook.timeouts.panel_run, "the panel's run to finish", arg=[panel.element_handle(), errors_before])
    text = panel.locator(".flbook-output").first.inner_text()
    errors = notebook.page.evaluate(f"{_KERNEL_ERRORS}")[errors_before:]
    assert not errors, f"{notebook.path}: the panel's run raised {errors}:\n{text[-3000:]}"
    failures = [marker for marker in RUN_FAILURES if marker in text]
    assert not failures, f"{notebook.path}: the panel's run failed:\n{text[-3000:]}"
    return plot_signature(panel)


def plot_signature(panel: Locator) -> list[str]:
    """The images in the panel's output (PNG data or SVG markup), to tell whether the plot changed."""
    return panel.evaluate("""el => {
        const output = el.querySelector('.flbook-output');
        return [...output.querySelectorAll('.jp-RenderedImage img')].map(img => img.src)
            .concat([...output.querySelectorAll('.jp-RenderedSVG')].map(svg => svg.innerHTML));
    }""")
