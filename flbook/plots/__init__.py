"""Figures for the chapters: learning curves of runs and pictures of partitions, in one seaborn theme."""
from flbook.plots.curves import accuracy_figure, accuracy_vs_bytes, learning_curves, use_theme
from flbook.plots.partitions import compare_partitions, plot_label_bars, plot_label_heatmap, plot_sizes

__all__ = ["accuracy_figure", "accuracy_vs_bytes", "compare_partitions", "learning_curves", "plot_label_bars",
           "plot_label_heatmap", "plot_sizes", "use_theme"]
