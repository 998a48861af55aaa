"""Percentile bootstrap confidence intervals for any metric of (y_true, prob_malignant).

With `groups` (patient ids), whole patients are resampled with replacement (cluster bootstrap):
images of one patient are correlated, and resampling them one by one makes intervals too narrow.
"""

import logging
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from ..errors import HistoclassError

logger = logging.getLogger(__name__)

MetricFn = Callable[[np.ndarray, np.ndarray], float]
# What scikit-learn and numpy raise when a metric is undefined on a resample, e.g. ROC AUC on a
# resample with one class only. Anything else is a bug in the metric and propagates.
UNDEFINED_METRIC_ERRORS = (ValueError, ZeroDivisionError, FloatingPointError)


class _PointAndInterval(NamedTuple):
    point: float
    low: float
    high: float


class MetricInterval(_PointAndInterval):
    """A metric on the full data and its bootstrap interval; unpacks as `point, low, high`.

    `num_resamples_used` is how many resamples the metric was defined on (low and high are NaN
    when it is 0).
    """

    num_resamples_used: int

    def __new__(cls, point: float, low: float, high: float, num_resamples_used: int = 0):
        interval = super().__new__(cls, point, low, high)
        interval.num_resamples_used = num_resamples_used
        return interval

    def __repr__(self) -> str:
        return (f"MetricInterval(point={self.point!r}, low={self.low!r}, high={self.high!r}, "
                f"num_resamples_used={self.num_resamples_used})")


def _evaluate(name: str, metric_fn: MetricFn, y_true: np.ndarray, prob: np.ndarray) -> float:
    """The metric's value, or NaN where it is undefined on this sample (it raised one of
    UNDEFINED_METRIC_ERRORS, or returned None or NaN)."""
    try:
        value = metric_fn(y_true, prob)
    except UNDEFINED_METRIC_ERRORS as error:
        logger.debug("metric %r undefined on a resample: %s", name, error)
        return np.nan
    if value is None or not np.isfinite(value):
        return np.nan
    return float(value)


class _GroupSampler:
    """Draws image indices for resamples of whole groups, without a Python loop over groups."""

    def __init__(self, groups: np.ndarray):
        _, group_index = np.unique(groups, return_inverse=True)
        self.image_order = np.argsort(group_index, kind="stable")
        self.group_sizes = np.bincount(group_index)
        self.group_starts = np.concatenate([[0], np.cumsum(self.group_sizes)[:-1]])

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        chosen = rng.integers(0, len(self.group_sizes), size=len(self.group_sizes))
        sizes = self.group_sizes[chosen]
        ends = np.cumsum(sizes)
        # Position k of the resample is member (k - start of its block) of its chosen group.
        offsets = np.repeat(self.group_starts[chosen] - (ends - sizes), sizes)
        return self.image_order[offsets + np.arange(ends[-1])]


def bootstrap_intervals(
    y_true,
    prob,
    metric_fns: dict[str, MetricFn],
    groups=None,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, MetricInterval]:
    """Percentile bootstrap interval of each metric, as {name: MetricInterval(point, low, high)}.

    Each metric is called as `metric_fn(y_true, prob)` on the full data (the point estimate) and
    on `num_resamples` resamples drawn with replacement: of images, or, when `groups` (one id per
    image, e.g. patient_id) is given, of whole groups. Resamples on which a metric raises
    ValueError / ZeroDivisionError or returns None or NaN (e.g. ROC AUC with one class only) are
    skipped for that metric; `num_resamples_used` on each result says how many were used.
    `prob` is passed to the metrics as given (shape (N,) or (N, 2)).
    """
    y_true = np.asarray(y_true)
    prob = np.asarray(prob)
    num_images = len(y_true)
    if len(prob) != num_images:
        raise HistoclassError(
            f"got {num_images} labels but {len(prob)} probabilities; pass one per image"
        )
    if num_images == 0:
        raise HistoclassError("got no images; bootstrap intervals need at least one image")
    if not metric_fns:
        raise HistoclassError("metric_fns is empty; pass at least one {name: metric_fn}")
    if not 0 < confidence < 1:
        raise HistoclassError(f"confidence must be between 0 and 1, got {confidence!r}; e.g. 0.95")
    if not isinstance(num_resamples, (int, np.integer)) or num_resamples < 1:
        raise HistoclassError(f"num_resamples must be a positive integer, got {num_resamples!r}")
    sampler = None
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (num_images,):
            raise HistoclassError(
                f"groups must hold one id per image ({num_images}), got shape {groups.shape}"
            )
        sampler = _GroupSampler(groups)

    points = {name: _evaluate(name, fn, y_true, prob) for name, fn in metric_fns.items()}
    undefined = [name for name, value in points.items() if np.isnan(value)]
    if undefined:
        raise HistoclassError(
            f"metric(s) {undefined} are undefined on the full data ({num_images} images, "
            f"classes {np.unique(y_true).tolist()}); evaluate on data where they are defined, "
            "e.g. with both classes present for ROC AUC"
        )

    rng = np.random.default_rng(seed)
    resampled = {name: np.empty(num_resamples) for name in metric_fns}
    # Undefined resamples are expected and summed up below; scikit-learn's warning for each one
    # would bury that summary.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in range(num_resamples):
            if sampler is None:
                index = rng.integers(0, num_images, size=num_images)
            else:
                index = sampler.draw(rng)
            y_resample, prob_resample = y_true[index], prob[index]
            for name, fn in metric_fns.items():
                resampled[name][r] = _evaluate(name, fn, y_resample, prob_resample)

    tail = 100.0 * (1.0 - confidence) / 2.0
    intervals = {}
    for name, values in resampled.items():
        values = values[~np.isnan(values)]
        if len(values) < num_resamples:
            logger.warning(
                "metric %r was undefined on %d of %d resamples (e.g. one class only); its "
                "interval uses the other %d", name, num_resamples - len(values), num_resamples,
                len(values),
            )
        low, high = np.percentile(values, [tail, 100.0 - tail]) if len(values) else (np.nan, np.nan)
        intervals[name] = MetricInterval(points[name], float(low), float(high), len(values))
    return intervals
