"""Files written next to a run or a comparison: JSON, loss curves and other figures."""

import json
import os
from pathlib import Path

import numpy as np

from gru_jax.metrics import row_percentages


def write_json(path, value):
    """Write JSON atomically: to a temporary file first, then renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with open(partial, "w") as stream:
        json.dump(value, stream, indent=2, sort_keys=False)
        stream.write("\n")
    os.replace(partial, path)


def plot_loss_curves(curves, path, title="training loss"):
    """Plot one or more loss curves to a PNG.

    Args:
      curves: dict of label -> list of [step, mean loss] pairs.
      path: the PNG file to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    for label, history in curves.items():
        if history:
            steps, losses = zip(*history)
            axes.plot(steps, losses, label=label)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("mean NLL loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if len(curves) > 1:
        axes.legend()
    figure.tight_layout()
    path = Path(path)
    partial = path.with_name(f".{path.stem}.{os.getpid()}.partial.png")
    figure.savefig(partial, dpi=100)
    plt.close(figure)
    os.replace(partial, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(figure, path):
    plt = _pyplot()
    path = Path(path)
    partial = path.with_name(f".{path.stem}.{os.getpid()}.partial.png")
    figure.savefig(partial, dpi=100)
    plt.close(figure)
    os.replace(partial, path)


def plot_confusion_matrices(matrices, path, class_names, title=None):
    """Draw confusion matrices side by side, each cell with its count and percent of the true class.

    Args:
      matrices: dict of label -> <int>[num_classes, num_classes] counts, rows the true class.
      path: the PNG file to write.
      class_names: one name per class, in index order.
    """
    plt = _pyplot()
    figure, axes_list = plt.subplots(1, len(matrices), figsize=(4.2 * len(matrices), 4), squeeze=False)
    for axes, (label, matrix) in zip(axes_list[0], matrices.items()):
        matrix = np.asarray(matrix)
        percent = row_percentages(matrix)
        axes.imshow(percent, cmap="Blues", vmin=0, vmax=100)
        for row in range(matrix.shape[0]):
            for column in range(matrix.shape[1]):
                color = "white" if percent[row, column] > 60 else "black"
                axes.text(column, row, f"{matrix[row, column]}\n{percent[row, column]:.1f}%", ha="center",
                          va="center", color=color, fontsize=12)
        axes.set_xticks(range(len(class_names)), [f"predicted\n{name}" for name in class_names])
        axes.set_yticks(range(len(class_names)), [f"true\n{name}" for name in class_names])
        axes.set_title(label)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    _save_figure(figure, path)


def plot_loss_curves_by_group(panels, path, title=None):
    """Plot loss curves side by side, with one color per group and one line per member (e.g. cell and seed).

    Args:
      panels: a list of (panel title, x-axis label, groups), where groups is a dict of group label ->
        dict of member label -> list of [x, mean loss] pairs.
      path: the PNG file to write.
    """
    plt = _pyplot()
    figure, axes_list = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    styles = ["-", "--", ":", "-."]
    for axes, (panel_title, xlabel, groups) in zip(axes_list[0], panels):
        for color_index, (group, members) in enumerate(groups.items()):
            for member_index, (member, history) in enumerate(members.items()):
                if not history:
                    continue
                xs, losses = zip(*history)
                axes.plot(xs, losses, color=f"C{color_index}", linestyle=styles[member_index % len(styles)],
                          marker="o" if len(xs) <= 30 else None, markersize=3, alpha=0.85, label=f"{group} {member}")
        axes.set_xlabel(xlabel)
        axes.set_ylabel("mean NLL loss")
        axes.set_title(panel_title)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8, ncol=2)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    _save_figure(figure, path)


def plot_grouped_intervals(groups, path, ylabel, title):
    """Draw, for each x position, one marker per series at its mean with its confidence interval,
    and the values of the single runs as small dots.

    Args:
      groups: dict of series label -> dict of x label -> a `stats.t_interval` dict.
      path: the PNG file to write.
    """
    plt = _pyplot()
    positions = list(dict.fromkeys(name for series in groups.values() for name in series))
    figure, axes = plt.subplots(figsize=(max(6, 1.6 * len(positions)), 4.5))
    width = 0.8 / max(len(groups), 1)
    for series_index, (label, series) in enumerate(groups.items()):
        offset = (series_index - (len(groups) - 1) / 2) * width
        for position, name in enumerate(positions):
            interval = series.get(name)
            if interval is None:
                continue
            x = position + offset
            if interval["ci_low"] is not None:
                axes.errorbar(x, interval["mean"], yerr=[[interval["mean"] - interval["ci_low"]],
                                                        [interval["ci_high"] - interval["mean"]]],
                              fmt="o", color=f"C{series_index}", capsize=4, markersize=7,
                              label=label if position == 0 else None)
            else:
                axes.plot(x, interval["mean"], "o", color=f"C{series_index}", markersize=7,
                          label=label if position == 0 else None)
            axes.plot([x + width * 0.25] * len(interval["values"]), interval["values"], ".", color=f"C{series_index}",
                      alpha=0.5)
    axes.set_xticks(range(len(positions)), positions, rotation=15)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3, axis="y")
    axes.legend()
    figure.tight_layout()
    _save_figure(figure, path)
