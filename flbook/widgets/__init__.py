"""Control panels for the chapters: controls in one style, a Run button, a progress bar and the figure in place.

`panel` holds the `ControlPanel`; `controls` every reusable knob and the object its values describe.
"""
from .controls import (BASELINE_DEFAULTS, DEFAULTS, NATURAL, baseline_controls, baselines_from, channel_from, chosen,
                       compare_run, compression_channel_from, compression_controls, compressor_from, device_options,
                       federation_from, knob, noise_controls, partition_from, participation_controls,
                       participation_from, selection, standard_controls, style, task_controls)
from .panel import DONE_CLASS, USER_ERRORS, ControlPanel, Run, control_panel

__all__ = ["BASELINE_DEFAULTS", "DEFAULTS", "NATURAL", "baseline_controls", "baselines_from", "channel_from", "chosen",
           "compare_run", "compression_channel_from", "compression_controls", "compressor_from", "device_options",
           "federation_from", "knob", "noise_controls", "partition_from", "participation_controls",
           "participation_from", "selection", "standard_controls", "style", "task_controls",
           "DONE_CLASS", "USER_ERRORS", "ControlPanel", "Run", "control_panel"]
