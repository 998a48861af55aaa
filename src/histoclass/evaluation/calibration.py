"""How far the predicted malignancy probabilities can be taken at face value, and temperature scaling.

Pure numpy: reliability bins, expected calibration error, Brier score, and fitting one temperature
to a two-class softmax model's probabilities. Drawing lives in `histoclass.plots`.
"""

import logging

import numpy as np

from ..errors import HistoclassError

logger = logging.getLogger(__name__)

# Probabilities are clipped before taking logits, so a model that outputs exactly 0 or 1 (float32
# softmax saturates at about 17 logits apart) still gets a finite log-odds.
PROBABILITY_CLIP = 1e-7
# log(T) is searched in [log 0.01, log 100]: outside that range the model's outputs are
# essentially hard labels or a constant, and a temperature there says more about the data than
# about calibration.
LOG_TEMPERATURE_BOUNDS = (np.log(0.01), np.log(100.0))


def as_prob_malignant(prob_malignant) -> np.ndarray:
    """Check and convert probabilities of malignancy into a 1-D float array.

    Takes shape (N,), or the model's (N, 2) softmax output, whose column 1 is taken.
    """
    prob = np.asarray(prob_malignant, dtype=np.float64)
    if prob.ndim == 2 and prob.shape[1] == 2:
        prob = prob[:, 1]
    if prob.ndim != 1:
        raise HistoclassError(
            f"expected probabilities of shape (N,) or (N, 2), got shape {prob.shape}; "
            "pass prob_malignant or the model's softmax output"
        )
    bad = ~np.isfinite(prob) | (prob < 0) | (prob > 1)
    if bad.any():
        raise HistoclassError(
            f"probabilities must lie in [0, 1], got {prob[bad][:5].tolist()}; "
            "pass the model's softmax probabilities, not logits"
        )
    return prob


def validate_predictions(y_true, prob_malignant) -> tuple[np.ndarray, np.ndarray]:
    """Check and convert labels and probabilities into two 1-D arrays (int labels, float probs).

    `y_true` holds 0 (benign) / 1 (malignant); `prob_malignant` as in `as_prob_malignant`.
    """
    y = np.asarray(y_true)
    prob = as_prob_malignant(prob_malignant)
    if y.ndim != 1:
        raise HistoclassError(f"expected 1-D labels, got shape {y.shape}; pass one 0/1 label per image")
    if len(y) != len(prob):
        raise HistoclassError(
            f"got {len(y)} labels but {len(prob)} probabilities; pass one probability per image"
        )
    if len(y) == 0:
        raise HistoclassError("got no images; pass at least one label and probability")
    unexpected_labels = np.setdiff1d(np.unique(y), [0, 1])
    if unexpected_labels.size:
        raise HistoclassError(
            f"labels must be 0 (benign) or 1 (malignant), got {unexpected_labels[:5].tolist()}; "
            "map the labels to 0/1 first"
        )
    return y.astype(np.int64), prob


def reliability_bins(y_true, prob, num_bins: int = 10) -> dict:
    """Group images into `num_bins` equal-width bins of prob_malignant.

    Bin i holds i/num_bins <= prob < (i+1)/num_bins, with prob == 1 in the last bin.
    Returns a dict of numpy arrays:
      edges (num_bins + 1,), counts (num_bins,) int,
      mean_predicted (num_bins,): mean prob_malignant in the bin,
      observed_fraction (num_bins,): fraction of malignant images in the bin;
    the last two are NaN for empty bins.
    """
    y, p = validate_predictions(y_true, prob)
    if not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
        raise HistoclassError(f"num_bins must be a positive integer, got {num_bins!r}")
    bin_index = np.minimum((p * num_bins).astype(np.int64), num_bins - 1)
    counts = np.bincount(bin_index, minlength=num_bins)
    sum_predicted = np.bincount(bin_index, weights=p, minlength=num_bins)
    sum_observed = np.bincount(bin_index, weights=y, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.where(counts > 0, sum_predicted / counts, np.nan)
        observed_fraction = np.where(counts > 0, sum_observed / counts, np.nan)
    return {
        "edges": np.linspace(0.0, 1.0, num_bins + 1),
        "counts": counts,
        "mean_predicted": mean_predicted,
        "observed_fraction": observed_fraction,
    }


def calibration_error_from_bins(bins: dict) -> float:
    """The expected calibration error of bins from `reliability_bins` (see
    `expected_calibration_error`)."""
    counts = bins["counts"]
    filled = counts > 0
    gaps = np.abs(bins["observed_fraction"][filled] - bins["mean_predicted"][filled])
    return float(np.sum(counts[filled] * gaps) / np.sum(counts))


def expected_calibration_error(y_true, prob, num_bins: int = 10) -> float:
    """Expected calibration error of prob_malignant, in [0, 1]; 0 is perfectly calibrated.

    ECE = sum over bins b of (n_b / N) * |observed_fraction_b - mean_predicted_b|, with the
    equal-width bins of `reliability_bins`: the count-weighted gap between how often images in a
    bin are malignant and the malignancy probability the model gave them. This is the
    positive-class (class-1) ECE; the "top-label" ECE of Guo et al. (2017) bins max(p, 1 - p)
    instead, and can differ.
    """
    return calibration_error_from_bins(reliability_bins(y_true, prob, num_bins))


def brier_score(y_true, prob) -> float:
    """Mean squared difference between prob_malignant and the 0/1 label; lower is better."""
    y, p = validate_predictions(y_true, prob)
    return float(np.mean((p - y) ** 2))


def _log_odds(prob_malignant: np.ndarray) -> np.ndarray:
    p = np.clip(prob_malignant, PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    return np.log(p) - np.log1p(-p)


def _mean_negative_log_likelihood(log_odds: np.ndarray, sign: np.ndarray, temperature: float) -> float:
    # -log sigmoid(s * z / T) = log(1 + exp(-s * z / T)), with s = +1 for malignant, -1 for benign.
    return float(np.mean(np.logaddexp(0.0, -sign * log_odds / temperature)))


def fit_temperature(y_true, prob_malignant, num_grid_points: int = 41) -> float:
    """The temperature T > 0 that minimises the negative log-likelihood of the labels under
    sigmoid(log_odds / T), where log_odds = log p1 - log p0 is the two-class softmax model's
    logit difference (probabilities clipped to [1e-7, 1 - 1e-7]).

    T > 1 softens over-confident predictions, T < 1 sharpens them. Fit on validation data, never
    on the test set the calibration is reported on. The search is deterministic: a grid over
    log T in [log 0.01, log 100], refined by golden-section search around the best grid point
    (the NLL is unimodal in log T, since it is convex in 1 / T).
    """
    y, p = validate_predictions(y_true, prob_malignant)
    log_odds = _log_odds(p)
    if not np.any(log_odds):
        logger.warning("all probabilities are 0.5, so any temperature fits; returning 1.0")
        return 1.0
    sign = 2.0 * y - 1.0

    def nll(log_temperature: float) -> float:
        return _mean_negative_log_likelihood(log_odds, sign, np.exp(log_temperature))

    low, high = LOG_TEMPERATURE_BOUNDS
    grid = np.linspace(low, high, num_grid_points)
    best = int(np.argmin([nll(t) for t in grid]))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, num_grid_points - 1)]

    inverse_golden = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = b - inverse_golden * (b - a), a + inverse_golden * (b - a)
    nll_c, nll_d = nll(c), nll(d)
    while b - a > 1e-7:
        if nll_c <= nll_d:
            b, d, nll_d = d, c, nll_c
            c = b - inverse_golden * (b - a)
            nll_c = nll(c)
        else:
            a, c, nll_c = c, d, nll_d
            d = a + inverse_golden * (b - a)
            nll_d = nll(d)
    log_temperature = (a + b) / 2.0
    if np.isclose(log_temperature, low, atol=1e-4) or np.isclose(log_temperature, high, atol=1e-4):
        logger.warning(
            "the fitted temperature %.3g is at the edge of the search range [0.01, 100]: the "
            "probabilities separate the classes perfectly or carry no signal", np.exp(log_temperature)
        )
    return float(np.exp(log_temperature))


def apply_temperature(prob_malignant, temperature: float) -> np.ndarray:
    """prob_malignant recomputed as sigmoid(log_odds / temperature); shape (N,).

    Takes shape (N,) or the (N, 2) softmax output. Probabilities are clipped to [1e-7, 1 - 1e-7]
    first, so even temperature 1 moves exact 0s and 1s slightly inside the interval.
    """
    if not np.isfinite(temperature) or temperature <= 0:
        raise HistoclassError(
            f"temperature must be a positive number, got {temperature!r}; use fit_temperature"
        )
    scaled = _log_odds(as_prob_malignant(prob_malignant)) / temperature
    with np.errstate(over="ignore"):  # exp overflows to inf for very small T: the limit, 0, is right
        return 1.0 / (1.0 + np.exp(-scaled))


def calibrate(prob_malignant, temperature: float, prior_shift: float = 0.0) -> np.ndarray:
    """The model's prob_malignant with the class-weight prior removed, then temperature-scaled.

    Class weights w make the model act as if malignant were w_malignant/w_benign times as
    common as it is: its log-odds are shifted by `prior_shift` = log of that ratio. Subtracting
    it restores probabilities for the real prevalence; temperature scaling, which cannot move a
    shift, then only has to fix the spread.
    """
    shifted = _log_odds(as_prob_malignant(prob_malignant)) - prior_shift
    with np.errstate(over="ignore"):
        unshifted = 1.0 / (1.0 + np.exp(-shifted))
    return apply_temperature(unshifted, temperature)
