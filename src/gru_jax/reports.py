"""Files written next to a run: JSON and the loss curve."""

import json
import os
from pathlib import Path


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
