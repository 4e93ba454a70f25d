"""Accuracy, confusion matrices and per-category results."""

import numpy as np

from gru_jax.archives import CLASS_NAMES


def confusion_matrix(labels, predictions, num_classes=2):
    """Return <int64>[num_classes, num_classes] counts, rows the true class, columns the predicted one."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


def row_percentages(matrix):
    """Return each row of a confusion matrix as percent of that true class (rows with no reviews are 0)."""
    totals = matrix.sum(axis=1, keepdims=True)
    return np.where(totals > 0, 100.0 * matrix / np.maximum(totals, 1), 0.0)


def classification_metrics(labels, predictions, categories=None, category_names=None, num_classes=2):
    """Compute accuracy, the confusion matrix and, when categories are given, per-category accuracy.

    Args:
      labels, predictions: <int>[num_reviews].
      categories: <int>[num_reviews] indices into `category_names`, or None.

    Returns:
      A JSON-ready dict.
    """
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    matrix = confusion_matrix(labels, predictions, num_classes)
    result = {
        "num_reviews": int(labels.size),
        "accuracy": float((labels == predictions).mean()) if labels.size else 0.0,
        "confusion_matrix": matrix.tolist(),
        "confusion_matrix_percent": np.round(row_percentages(matrix), 4).tolist(),
    }
    if categories is not None:
        per_category = {}
        categories = np.asarray(categories)
        for index, name in enumerate(category_names):
            selected = categories == index
            if selected.any():
                per_category[name] = {
                    "num_reviews": int(selected.sum()),
                    "accuracy": float((labels[selected] == predictions[selected]).mean()),
                }
        result["per_category"] = per_category
    return result


class MetricsAccumulator:
    """Counts for `classification_metrics`, updated batch by batch so that memory does not grow with
    the number of reviews.

    `result()` returns the dict that `classification_metrics` returns for all updates together.
    """

    def __init__(self, num_classes=2):
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.category_counts = {}  # name -> [reviews, correct]
        self.track_categories = False

    def update(self, labels, predictions, categories=None, category_names=None):
        """Add reviews.

        Args:
          labels, predictions: <int>[num_reviews].
          categories: <int>[num_reviews] indices into `category_names`, or None.
        """
        labels = np.asarray(labels)
        predictions = np.asarray(predictions)
        self.matrix += confusion_matrix(labels, predictions, self.matrix.shape[0])
        if categories is None:
            return
        self.track_categories = True
        correct = labels == predictions
        categories = np.asarray(categories)
        for index in np.unique(categories):
            selected = categories == index
            counts = self.category_counts.setdefault(category_names[int(index)], [0, 0])
            counts[0] += int(selected.sum())
            counts[1] += int(correct[selected].sum())

    def result(self):
        total = int(self.matrix.sum())
        result = {
            "num_reviews": total,
            "accuracy": float(np.trace(self.matrix) / total) if total else 0.0,
            "confusion_matrix": self.matrix.tolist(),
            "confusion_matrix_percent": np.round(row_percentages(self.matrix), 4).tolist(),
        }
        if self.track_categories:
            result["per_category"] = {
                name: {"num_reviews": reviews, "accuracy": correct / reviews}
                for name, (reviews, correct) in sorted(self.category_counts.items())
            }
        return result


def format_report(metrics, title="test results"):
    """Return accuracy, the confusion matrix (counts and percent of each true class) and per-category accuracy as text."""
    matrix = np.asarray(metrics["confusion_matrix"])
    percent = np.asarray(metrics["confusion_matrix_percent"])
    names = CLASS_NAMES if matrix.shape[0] == len(CLASS_NAMES) else [str(i) for i in range(matrix.shape[0])]
    width = max(len(f"predicted {name}") for name in names) + 2
    lines = [f"{title}: accuracy {100 * metrics['accuracy']:.2f}% on {metrics['num_reviews']} reviews", ""]
    header = " " * 16 + "".join(f"predicted {name}".rjust(width) for name in names)
    lines.append(header)
    for row, name in enumerate(names):
        cells = "".join(f"{matrix[row, col]:d} ({percent[row, col]:.2f}%)".rjust(width) for col in range(len(names)))
        lines.append(f"true {name}".ljust(16) + cells)
    if metrics.get("per_category"):
        lines.append("")
        for name, result in metrics["per_category"].items():
            lines.append(f"  {name:<24} accuracy {100 * result['accuracy']:6.2f}% ({result['num_reviews']} reviews)")
    return "\n".join(lines)
