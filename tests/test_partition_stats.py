"""Partition statistics (counts, entropy, sizes, summary) and the figures drawn from them."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from flbook.partition import counts_matrix, dirichlet, iid, label_entropy, sizes, summary  # noqa: E402
from flbook.plots.partitions import (  # noqa: E402
    compare_partitions,
    plot_label_bars,
    plot_label_heatmap,
    plot_sizes,
)

LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 0, 1, 2])
PARTS = [np.array([0, 1, 2]), np.array([3, 5, 9]), np.array([4, 6, 7, 8, 10, 11])]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_counts_matrix_counts_each_class_per_client():
    counts = counts_matrix(LABELS, PARTS)
    np.testing.assert_array_equal(counts, [[3, 0, 0], [1, 1, 1], [0, 2, 4]])
    assert counts.sum() == len(LABELS) and counts.dtype == np.int64
    assert counts_matrix(torch.as_tensor(LABELS), PARTS, n_classes=5).shape == (3, 5)


def test_counts_matrix_rejects_too_few_classes():
    with pytest.raises(ValueError, match=r"n_classes must be > the largest label \(2\)"):
        counts_matrix(LABELS, PARTS, n_classes=2)


def test_counts_sum_to_n_for_a_real_partition():
    labels = np.random.default_rng(0).integers(0, 10, 500)
    counts = counts_matrix(labels, dirichlet(labels, 20, alpha=0.3, seed=0))
    np.testing.assert_array_equal(counts.sum(0), np.bincount(labels, minlength=10))


def test_entropy_is_zero_for_one_class_and_log2_c_for_uniform():
    entropy = label_entropy(LABELS, PARTS)
    assert entropy[0] == 0.0
    assert entropy[1] == pytest.approx(np.log2(3))
    assert 0.0 < entropy[2] < 1.0
    assert label_entropy(LABELS, [np.array([], dtype=np.int64)], n_classes=3)[0] == 0.0  # empty client


def test_sizes_and_summary():
    np.testing.assert_array_equal(sizes(PARTS), [3, 3, 6])
    table = summary(LABELS, PARTS)
    assert list(table.columns) == ["client", "size", "entropy", "n_classes_present"]
    assert table["size"].tolist() == [3, 3, 6]
    assert table["n_classes_present"].tolist() == [1, 3, 2]
    assert table["entropy"].tolist() == pytest.approx(label_entropy(LABELS, PARTS).tolist())


def test_plots_return_axes():
    counts = counts_matrix(LABELS, PARTS)
    assert isinstance(plot_label_heatmap(counts), Axes)
    assert isinstance(plot_label_bars(counts), Axes)
    assert isinstance(plot_sizes(PARTS), Axes)
    _, ax = plt.subplots()
    assert plot_label_bars(counts, ax=ax) is ax


def test_plots_of_many_clients_show_the_first_50_and_say_so():
    labels = np.random.default_rng(0).integers(0, 10, 3000)
    counts = counts_matrix(labels, dirichlet(labels, 200, alpha=0.5, seed=0))
    bars = plot_label_bars(counts)
    assert "first 50 of 200 clients" in bars.get_title()
    assert len(bars.patches) == 50 * 10
    assert "first 50 of 200 clients" in plot_label_heatmap(counts).get_title()


def test_compare_partitions_draws_one_column_per_partition():
    labels = np.random.default_rng(0).integers(0, 10, 600)
    partitions = {"iid": iid(labels, 60, seed=0), "dirichlet 0.1": dirichlet(labels, 60, alpha=0.1, seed=0)}
    fig = compare_partitions(partitions, labels)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 4
    titles = [ax.get_title() for ax in fig.axes]
    assert "iid (first 50 of 60 clients)" in titles and "dirichlet 0.1 (first 50 of 60 clients)" in titles
    with pytest.raises(ValueError, match="partitions must hold at least one"):
        compare_partitions({}, labels)


def test_counts_matrix_refuses_fractional_labels_and_numbers_string_labels():
    from flbook.partition import counts_matrix, summary

    with pytest.raises(ValueError, match="whole-number class ids"):
        counts_matrix(np.array([0.5, 1.5] * 5), [np.arange(10)])
    assert counts_matrix(np.array([0.0, 1.0, 1.0]), [np.arange(3)]).tolist() == [[1, 2]]
    labels = np.array(["b", "a", "b", "c"])
    assert counts_matrix(labels, [np.array([0, 1]), np.array([2, 3])]).tolist() == [[1, 1, 0], [0, 1, 1]]
    assert summary(labels, [np.array([0, 1]), np.array([2, 3])])["n_classes_present"].tolist() == [2, 2]
