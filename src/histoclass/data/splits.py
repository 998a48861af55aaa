"""Train/validation/test splits by patient or group, never by patch.

Patches of one patient look alike; with the patient on both sides of a split every metric is
inflated (the 90-99 % accuracies of many IDC notebooks). So parts are assigned whole groups.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import HistoclassError
from .records import PARTS

log = logging.getLogger(__name__)


def split_by_group(labels: np.ndarray, groups: np.ndarray, fractions: Sequence[float] = (0.7, 0.15, 0.15),
                   seed: int = 0, given: Sequence[str | None] | None = None) -> np.ndarray:
    """Assigns each image a part ('train', 'val' or 'test'), whole groups at a time.

    Parts the data already gives (`given`, e.g. the testSet of images/trainSet + testSet) are kept; parts it
    lacks are carved out of its training images with the same fractions. Groups are dealt out
    in a seeded random order, each to the part that most lacks images of the group's majority
    class relative to its target, so parts get their share of images and of positives.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups, dtype=object)
    if len(labels) != len(groups):
        raise ValueError("labels and groups differ in length")
    fractions = np.asarray(fractions, dtype=float)
    if fractions.shape != (3,) or (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0):
        raise HistoclassError(f"split fractions {fractions.tolist()} must be three numbers >= 0 that sum to 1")
    parts = np.array([p if p else "" for p in (given if given is not None else [None] * len(labels))], dtype=object)
    missing_parts = [p for p in PARTS if p not in set(parts)]
    to_assign = (parts == "") | ((parts == "train") & bool(missing_parts))
    if not to_assign.any() or not missing_parts:
        return parts.astype(str)
    # Only the parts the data lacks (and train) receive groups; fractions renormalised. A part
    # asked for with fraction 0 (no test part: the user evaluates elsewhere) stays empty.
    targets = {p: fractions[PARTS.index(p)] for p in ["train", *missing_parts]
               if p in PARTS and (p == "train" or fractions[PARTS.index(p)] > 0)}
    total = sum(targets.values())
    if total <= 0:
        raise HistoclassError("the split fractions leave no images for the parts the data lacks")
    targets = {p: f / total for p, f in targets.items()}
    parts[to_assign] = _deal_groups(labels[to_assign], groups[to_assign], targets, seed)
    return parts.astype(str)


def fold_by_group(labels: np.ndarray, groups: np.ndarray, num_folds: int, seed: int = 0) -> np.ndarray:
    """Fold number (0 .. num_folds - 1) of each image for cross-validation: whole groups at a
    time, each fold with its share of images and of positives (stratified and grouped)."""
    labels = np.asarray(labels)
    groups = np.asarray(groups, dtype=object)
    num_groups = len(set(groups.astype(str)))
    if num_folds < 2 or num_folds > num_groups:
        raise HistoclassError(f"--folds {num_folds} does not fit data with {num_groups} patients/groups; "
                              f"give a number from 2 to {num_groups}")
    targets = {str(k): 1.0 / num_folds for k in range(num_folds)}
    return _deal_groups(labels, groups, targets, seed).astype(int)


def _deal_groups(labels: np.ndarray, groups: np.ndarray, targets: dict[str, float], seed: int) -> np.ndarray:
    unique, inverse = np.unique(groups.astype(str), return_inverse=True)
    sizes = np.bincount(inverse, minlength=len(unique))
    positives = np.bincount(inverse, weights=labels, minlength=len(unique))
    names = list(targets)
    want = np.array([targets[p] for p in names])
    total_pos, total_neg = positives.sum(), sizes.sum() - positives.sum()
    have_pos = np.zeros(len(names))
    have_neg = np.zeros(len(names))
    rng = np.random.default_rng(seed)
    # Large groups first (placed while there is room), in random order among equals.
    order = sorted(rng.permutation(len(unique)), key=lambda g: -sizes[g])
    assignment = np.empty(len(unique), dtype=object)
    for group in order:
        pos, neg = positives[group], sizes[group] - positives[group]
        # How far each part would stand below its target after taking this group, summed over
        # both classes; the part that needs it most takes it.
        need_pos = want * total_pos - have_pos
        need_neg = want * total_neg - have_neg
        score = (need_pos / max(total_pos, 1)) * (pos > 0) + (need_neg / max(total_neg, 1)) * (neg > 0)
        score += (need_pos + need_neg) / max(sizes.sum(), 1) * 1e-3  # ties: the emptier part
        best = int(np.argmax(score))
        assignment[group] = names[best]
        have_pos[best] += pos
        have_neg[best] += neg
    return assignment[inverse]


def check_no_leakage(groups: Sequence[str], parts: Sequence[str]) -> None:
    """Raises when a patient or group has images in two parts."""
    seen: dict[str, str] = {}
    for group, part in zip(groups, parts):
        previous = seen.setdefault(str(group), part)
        if previous != part:
            raise HistoclassError(
                f"patient/group {str(group)[:60]!r} is in both the {previous} and the {part} part; "
                "a patient must be in one part only (check the split file or the data's split)")


def read_split_file(path: str | Path) -> dict[str, str]:
    """Published patient lists: a CSV (group,split) or `cases_train.txt`/`cases_val.txt`/
    `cases_test.txt` files (one id a line), given as their folder or one of them."""
    path = Path(path)
    if not path.exists():
        raise HistoclassError(f"split file {path} does not exist")
    if path.is_dir() or path.suffix.lower() == ".txt":
        folder = path if path.is_dir() else path.parent
        assignment: dict[str, str] = {}
        found = False
        for part, names in {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}.items():
            for name in names:
                list_file = folder / f"cases_{name}.txt"
                if list_file.is_file():
                    found = True
                    for line in list_file.read_text(encoding="utf-8").split():
                        _assign(assignment, line.strip(), part, list_file)
        if not found:
            raise HistoclassError(f"found no cases_train.txt, cases_val.txt or cases_test.txt in {folder}")
        return assignment
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = {c.strip().lower(): c for c in reader.fieldnames or []}
            group_column = next((columns[c] for c in ("group", "patient", "patient_id") if c in columns), None)
            if group_column is None or "split" not in columns:
                raise HistoclassError(f"split file {path} needs the columns group (or patient) and split")
            assignment = {}
            for row in reader:
                part = row[columns["split"]].strip().lower()
                part = "val" if part == "validation" else part
                if part not in PARTS:
                    raise HistoclassError(f"split file {path}: split {part!r} is not train, val or test")
                _assign(assignment, row[group_column].strip(), part, path)
            return assignment
    except UnicodeDecodeError as err:
        raise HistoclassError(f"split file {path} is not UTF-8 text") from err


def _assign(assignment: dict[str, str], group: str, part: str, source: Path) -> None:
    if not group:
        return
    previous = assignment.get(group)
    if previous is not None and previous != part:
        raise HistoclassError(
            f"patient {group!r} is listed for both {previous} and {part} ({source}); "
            "a patient must be in one part only")
    assignment[group] = part


def apply_split_file(groups: Sequence[str], assignment: dict[str, str]) -> np.ndarray:
    """Parts from a published list; images of unlisted patients get '' (left out)."""
    parts = np.array([assignment.get(str(g), "") for g in groups], dtype=object)
    left_out = int((parts == "").sum())
    if left_out == len(parts):
        raise HistoclassError(
            "none of the data's patients/groups is in the split file; check that its ids match the "
            "patient ids in the file names")
    if left_out:
        log.info("%d images of patients not in the split file are left out", left_out)
    return parts.astype(str)
