"""The cross-validation plan: which patients/groups are held out for testing, and the fold of
every other one. Pure, seeded; written once as folds.csv and read back on resume."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..data.records import ImageRecord
from ..data.splits import check_no_leakage, fold_by_group, split_by_group
from ..errors import HistoclassError
from ..evaluation.metrics import has_both_classes
from ..fileio import write_csv_atomic

TEST = "test"


def plan_folds(records: list[ImageRecord], num_folds: int, test_fraction: float, seed: int) -> dict[str, str]:
    """{group: "0" .. str(num_folds - 1), or "test"}.

    The test part the data defines is kept as it is; without one, `test_fraction` of the groups
    is carved out (0: none). Every other image (the data's train and val parts alike) goes to a
    fold, whole groups at a time, stratified by label.
    """
    labels = np.array([r.label for r in records])
    groups = np.array([str(r.group) for r in records], dtype=object)
    given = [TEST if r.part == TEST else None for r in records]
    parts = split_by_group(labels, groups, (1.0 - test_fraction, 0.0, test_fraction), seed=seed, given=given)
    check_no_leakage(groups, parts)
    pool = np.flatnonzero(parts == "train")
    folds = fold_by_group(labels[pool], groups[pool], num_folds, seed=seed)
    for k in range(num_folds):
        if not has_both_classes(labels[pool][folds == k]):
            raise HistoclassError(f"fold {k} of {num_folds} holds one class only; give fewer --folds")
    plan = {g: TEST for g in groups[parts == TEST]}
    plan.update({g: str(k) for g, k in zip(groups[pool], folds)})
    return plan


def fold_split(plan: dict[str, str], fold: int) -> dict[str, str]:
    """The split of the run that validates on `fold`: {group: train | val | test}."""
    return {g: TEST if f == TEST else ("val" if f == str(fold) else "train") for g, f in plan.items()}


def write_plan(path: Path, plan: dict[str, str]) -> None:
    write_csv_atomic(path, ("group", "fold"), sorted(plan.items()), defuse_formulas=False)


def read_plan(path: Path) -> dict[str, str]:
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
            return {row["group"]: row["fold"] for row in csv.DictReader(handle)}
    except (OSError, KeyError, csv.Error) as err:
        raise HistoclassError(f"{path} is damaged ({err}); start the cross-validation in a new folder") from err


def write_split_file(path: Path, split: dict[str, str]) -> None:
    """A split file as `train --split-file` reads it (group,split)."""
    write_csv_atomic(path, ("group", "split"), sorted(split.items()), defuse_formulas=False)
