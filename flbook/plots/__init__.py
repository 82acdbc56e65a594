"""Figures for the chapters: learning curves of runs and pictures of partitions, in one seaborn theme."""
from .curves import (accuracy_figure, accuracy_vs_bytes, accuracy_vs_memory, budget_figure, bytes_figure,
                     learning_curves, use_theme)
from .partitions import compare_partitions, plot_label_bars, plot_label_heatmap, plot_sizes
from .robustness import attack_rule_heatmap, f_heterogeneity_heatmap

__all__ = ["accuracy_figure", "accuracy_vs_bytes", "accuracy_vs_memory", "attack_rule_heatmap", "budget_figure", "bytes_figure",
           "compare_partitions", "f_heterogeneity_heatmap",
           "learning_curves", "plot_label_bars", "plot_label_heatmap", "plot_sizes", "use_theme"]
