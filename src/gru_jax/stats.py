"""Statistics for comparing models: t confidence intervals over seeds and McNemar's paired test."""

import math

import numpy as np
from scipy import stats

MCNEMAR_METHOD = "exact two-sided binomial test on the discordant pairs, scipy.stats.binomtest with p = 0.5"


def t_interval(values, confidence=0.95):
    """Summarize values from independent runs with a Student-t confidence interval for their mean.

    The interval is mean ± t_{(1 + confidence) / 2, n - 1} * sd / sqrt(n), with sd the sample
    standard deviation (n - 1 in the denominator) and t from `scipy.stats.t`.

    Args:
      values: <float>[n], one value per run.

    Returns:
      A JSON-ready dict with values, n, mean, sd, and ci_low and ci_high, which are None with
      fewer than two values.
    """
    values = [float(value) for value in values]
    n = len(values)
    if n == 0:
        raise ValueError("t_interval needs at least one value")
    mean = float(np.mean(values))
    result = {"values": values, "n": n, "mean": mean, "sd": None, "ci_low": None, "ci_high": None,
              "confidence": confidence}
    if n > 1:
        sd = float(np.std(values, ddof=1))
        half_width = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
        result.update(sd=sd, ci_low=mean - half_width, ci_high=mean + half_width)
    return result


def mcnemar_test(correct_a, correct_b):
    """Test whether two classifiers scored on the same reviews have the same error rate (McNemar).

    Only reviews that exactly one of the two gets right carry information. Under the null hypothesis
    each such review is equally likely to favour either model, so the count favouring model a is
    Binomial(discordant, 0.5), tested exactly and two-sided.

    Args:
      correct_a, correct_b: <bool>[num_reviews], whether each model classified each review correctly.

    Returns:
      A JSON-ready dict: both_correct, only_a_correct, only_b_correct, both_wrong, p_value and method.
    """
    correct_a = np.asarray(correct_a, dtype=bool)
    correct_b = np.asarray(correct_b, dtype=bool)
    if correct_a.shape != correct_b.shape:
        raise ValueError(f"paired results differ in shape: {correct_a.shape} and {correct_b.shape}")
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    discordant = only_a + only_b
    p_value = float(stats.binomtest(only_a, discordant, 0.5).pvalue) if discordant else 1.0
    return {
        "both_correct": int(np.sum(correct_a & correct_b)),
        "only_a_correct": only_a,
        "only_b_correct": only_b,
        "both_wrong": int(np.sum(~correct_a & ~correct_b)),
        "p_value": p_value,
        "method": MCNEMAR_METHOD,
    }
