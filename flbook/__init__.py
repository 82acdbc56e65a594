"""flbook: an interactive workbook on federated and distributed learning.

The package holds everything the chapters run: datasets, partitioners, models, the simulation core
(federation, executors, participation, channel), algorithms, widgets and plots.
"""
from . import algorithms
from .runtime import default_device
from .federation import Federation
from .rounds import DivergenceError
from .models import FlatModel, make_model
from .utils import seed_everything, show_source

__all__ = ["algorithms", "default_device", "DivergenceError", "Federation", "FlatModel", "make_model",
           "seed_everything", "show_source"]
