"""The files of a comparison: report.md, comparison.json and the figures it shows."""

from pathlib import Path

from gru_jax.archives import CLASS_NAMES
from gru_jax.config import DEFAULT_LEARNING_RATES
from gru_jax.reports import plot_confusion_matrices, plot_grouped_intervals, plot_loss_curves_by_group, write_json

REPORT_FILES = ("report.md", "comparison.json", "confusion_matrices.png", "accuracy.png", "loss_curves.png")


def write_comparison(summary, output_dir):
    """Write the report, the JSON of every number in it, and the figures to `output_dir`.

    Args:
      summary: the dict from `comparison.summarize`.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    runs = summary["runs"]
    cells = list(summary["cells"])

    matrices = {f"{cell}, seed {run['seed']} (accuracy {100 * run['test']['accuracy']:.2f}%)": run["test"]["confusion_matrix"]
                for cell, run in confusion_runs(summary).items()}
    plot_confusion_matrices(matrices, output_dir / "confusion_matrices.png", CLASS_NAMES,
                            title="test confusion matrices: counts and percent of each true class")

    intervals = {
        cell: dict({"all reviews": result["accuracy"]}, **result["per_category"])
        for cell, result in summary["cells"].items()
    }
    percent_intervals = {cell: {name: _scaled(interval, 100) for name, interval in series.items()}
                         for cell, series in intervals.items()}
    plot_grouped_intervals(percent_intervals, output_dir / "accuracy.png", "test accuracy (%)",
                           f"mean over seeds with {_percent(summary['settings']['confidence'])} confidence interval; "
                           "dots: single seeds")

    per_epoch = {cell: {f"seed {run['seed']}": [[epoch, loss] for epoch, loss in enumerate(run["epoch_losses"], 1)]
                        for run in runs if run["cell"] == cell} for cell in cells}
    per_window = {cell: {f"seed {run['seed']}": run["loss_history"] for run in runs if run["cell"] == cell}
                  for cell in cells}
    plot_loss_curves_by_group(
        [("mean over each epoch", "epoch", per_epoch),
         ("mean over each logging window (the last of an epoch may be short)", "optimizer step", per_window)],
        output_dir / "loss_curves.png", title="training loss of both cells",
    )

    summary = dict(summary, files=list(REPORT_FILES))
    write_json(output_dir / "comparison.json", summary)
    (output_dir / "report.md").write_text(format_markdown(summary))
    return summary


def confusion_runs(summary):
    """Pick the run of each cell whose confusion matrix is shown: the seed of McNemar's test when there
    is one, else the cell's first run."""
    runs = summary["runs"]
    seed = summary["mcnemar"]["seed"] if summary["mcnemar"] else None
    chosen = {}
    for cell in summary["cells"]:
        cell_runs = [run for run in runs if run["cell"] == cell]
        chosen[cell] = next((run for run in cell_runs if run["seed"] == seed), cell_runs[0])
    return chosen


def summary_table(summary):
    """Return the Markdown table with one row per cell: size, accuracy over seeds, time and throughput."""
    confidence = _percent(summary["settings"]["confidence"])
    lines = [
        f"| cell | layers | hidden size | parameters | accuracy, mean ± sd | {confidence} CI (%) | per seed (%) "
        "| training time per run | training throughput | test throughput |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for cell, result in summary["cells"].items():
        accuracy = result["accuracy"]
        per_seed = ", ".join(f"{seed}: {100 * value:.2f}" for seed, value in zip(result["seeds"], accuracy["values"]))
        throughput = result["train_reviews_per_second"]
        throughput_text = f"{throughput['mean']:.0f} reviews/s" if throughput else "not recorded"
        lines.append(
            f"| {cell} | {result['num_layers']} | {result['hidden_size']} | {result['num_parameters']:,} "
            f"| {_mean_sd(accuracy)}% | {_interval(accuracy)} | {per_seed} "
            f"| {result['train_seconds']['mean']:.1f} s | {throughput_text} "
            f"| {result['test_reviews_per_second']['mean']:.0f} reviews/s |"
        )
    return "\n".join(lines)


def format_markdown(summary):
    settings = summary["settings"]
    cells = list(summary["cells"])
    confidence = _percent(settings["confidence"])
    runs = summary["runs"]
    num_test_reviews = runs[0]["test"]["num_reviews"]
    lines = [
        f"# {' vs '.join(cells)}: test accuracy over {len(settings['seeds'])} seed(s)",
        "",
        f"- Training data: `{settings['train_data']}`",
        f"- Test data: `{settings['test_data']}` ({num_test_reviews} scored reviews)",
        f"- Word vectors: {settings['embeddings_source']}"
        + (f" (word2vec seed {settings['word2vec_seed']})" if not settings.get("embeddings") else ""),
        f"- Seeds: {', '.join(map(str, settings['seeds']))}. A seed sets initialization and the order of batches; "
        "both cells see the same word vectors and, for a given seed, the same batches.",
        f"- Settings: {settings['epochs']} epochs, batch size {settings['batch_size']}, learning rate "
        f"{settings['learning_rate'] or 'per cell (' + ', '.join(f'{c} {r}' for c, r in DEFAULT_LEARNING_RATES.items()) + ')'}, momentum {settings['momentum']}, gradient clipping "
        f"{settings['clip_norm'] if settings['clip_norm'] is not None else 'off'}",
        f"- Devices: {settings['devices']}",
        "",
        "## Summary",
        "",
        summary_table(summary),
        "",
        f"The {confidence} confidence interval (CI) of a mean over n seeds is mean ± t(0.975, n − 1) · sd / √n, "
        "with sd the sample standard deviation and t the Student-t quantile (scipy.stats.t). With one seed there "
        "is no interval, and with few seeds an interval can extend past 0 or 100%. Training time and both "
        "throughputs include compilation. Training throughput is training reviews times epochs per second of "
        "training time.",
        "",
    ]
    for warning in summary.get("warnings", []):
        lines += [f"**Warning:** {warning}", ""]
    lines += _difference_lines(summary)
    lines += [
        "",
        "## Confusion matrices",
        "",
        "![confusion matrices](confusion_matrices.png)",
        "",
    ]
    for cell, run in confusion_runs(summary).items():
        lines += [f"{cell}, seed {run['seed']}:", "", _confusion_table(run["test"]), ""]

    lines += ["## Accuracy per category", "", "![accuracy per category](accuracy.png)", ""]
    lines += _category_table(summary)
    lines += ["", "## Training loss", "", "![training loss](loss_curves.png)", "", "## Runs", ""]
    lines += [
        "| cell | seed | accuracy | steps | epochs | training time | final epoch loss | checkpoint |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for run in runs:
        final_loss = f"{run['epoch_losses'][-1]:.4f}" if run["epoch_losses"] else "n/a"
        lines.append(f"| {run['cell']} | {run['seed']} | {100 * run['test']['accuracy']:.2f}% | {run['steps']} "
                     f"| {run['epochs']} | {run['train_seconds']:.1f} s | {final_loss} | `{run['checkpoint']}` |")
    lines += ["", "Every number above is also in `comparison.json`.", ""]
    return "\n".join(lines)


def _difference_lines(summary):
    difference = summary["difference"]
    mcnemar = summary["mcnemar"]
    if difference is None:
        return ["No seed was run for both cells, so there is no paired comparison."]
    first, second = difference["cells"]
    confidence = _percent(summary["settings"]["confidence"])
    lines = [
        "## Difference",
        "",
        f"Accuracy of {first} minus {second}, paired by seed ({', '.join(map(str, difference['seeds']))}): "
        f"{_signed(difference['mean'])} percentage points, {confidence} CI {_interval(difference, signed=True)} "
        "(the t interval of the per-seed differences).",
        "",
        f"McNemar's test on the predictions of seed {mcnemar['seed']} for the same {mcnemar['num_reviews']} test "
        f"reviews: {mcnemar['only_a_correct']} reviews only {first} classified correctly, "
        f"{mcnemar['only_b_correct']} only {second}. The {mcnemar['method']} gives p = {mcnemar['p_value']:.4g}. ",
    ]
    if mcnemar["significant"]:
        lines[-1] += f"The difference is significant at the {mcnemar['alpha']} level."
    else:
        lines[-1] += f"The difference is not significant at the {mcnemar['alpha']} level."
    return lines


def _confusion_table(metrics):
    matrix, percent = metrics["confusion_matrix"], metrics["confusion_matrix_percent"]
    lines = ["| | " + " | ".join(f"predicted {name}" for name in CLASS_NAMES) + " |",
             "|---|" + "---:|" * len(CLASS_NAMES)]
    for row, name in enumerate(CLASS_NAMES):
        cells = " | ".join(f"{matrix[row][column]} ({percent[row][column]:.2f}%)" for column in range(len(CLASS_NAMES)))
        lines.append(f"| true {name} | {cells} |")
    return "\n".join(lines)


def _category_table(summary):
    cells = list(summary["cells"])
    names = list(dict.fromkeys(name for result in summary["cells"].values() for name in result["per_category"]))
    lines = ["| category | " + " | ".join(f"{cell}, mean ± sd" for cell in cells) + " |",
             "|---|" + "---:|" * len(cells)]
    for name in names:
        values = []
        for cell in cells:
            interval = summary["cells"][cell]["per_category"].get(name)
            values.append(f"{_mean_sd(interval)}%" if interval else "n/a")
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    return lines


def _scaled(interval, factor):
    scaled = dict(interval)
    for key in ("mean", "sd", "ci_low", "ci_high"):
        if scaled[key] is not None:
            scaled[key] = scaled[key] * factor
    scaled["values"] = [value * factor for value in interval["values"]]
    return scaled


def _mean_sd(interval):
    """Format an interval of fractions as percent: 'mean ± sd', or the mean alone for one seed."""
    if interval["sd"] is None:
        return _points(interval["mean"])
    return f"{_points(interval['mean'])} ± {_points(interval['sd'])}"


def _interval(interval, signed=False):
    """Format the confidence interval of fractions as percent."""
    if interval["ci_low"] is None:
        return "n/a (one seed)"
    number = _signed if signed else _points
    return f"[{number(interval['ci_low'])}, {number(interval['ci_high'])}]"


def _points(fraction):
    return f"{100 * fraction:.2f}"


def _signed(fraction):
    return f"{100 * fraction:+.2f}"


def _percent(fraction):
    return f"{100 * fraction:g}%"
