"""The cross-validation plan: which patients/groups are held out for testing, and the fold of
every other one. Pure, seeded; written once as folds.csv and read back on resume."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..data.records import ImageRecord
from ..data.splits import (check_no_leakage, counts_groups, deal_groups, fold_by_group, max_two_sided_parts,
                           require_two_sided)
from ..errors import HistoclassError
from ..fileio import write_csv_atomic

TEST = "test"


def plan_folds(records: list[ImageRecord], num_folds: int, test_fraction: float, seed: int,
               balance: str = "patients") -> dict[str, str]:
    """{group: "0" .. str(num_folds - 1), or "test"}.

    The test part the data defines is kept as it is; without one, `test_fraction` of the groups
    is carved out (0: none), in the same deal as the folds, so the carved test part and every
    fold hold both classes. Every other image (the data's train and val parts alike) goes to a
    fold, whole groups at a time, stratified by label; with `balance` "patients" each part also
    gets its share of the patients/groups (see `data.splits.split_by_group`).
    """
    labels = np.array([r.label for r in records])
    groups = np.array([str(r.group) for r in records], dtype=object)
    if any(r.part == TEST for r in records) or test_fraction <= 0:
        held_out = np.array([r.part == TEST for r in records])
        check_no_leakage(groups, np.where(held_out, TEST, "train"))
        pool = np.flatnonzero(~held_out)
        folds = fold_by_group(labels[pool], groups[pool], num_folds, seed=seed, balance=balance)
        plan = {g: TEST for g in groups[held_out]}
        plan.update({g: str(k) for g, k in zip(groups[pool], folds)})
        return plan
    num_groups = len(set(groups))
    if num_folds < 2 or num_folds >= num_groups:
        raise HistoclassError(f"--folds {num_folds} with a test part does not fit data with {num_groups} "
                              f"patients/groups; give a number from 2 to {num_groups - 1}, or --test-fraction 0")
    names = [TEST, *map(str, range(num_folds))]
    shares = [test_fraction, *[(1.0 - test_fraction) / num_folds] * num_folds]
    parts = deal_groups(labels, groups, dict(zip(names, shares)), seed, counts_groups(balance))
    most = max_two_sided_parts(labels, groups) - 1
    require_two_sided(labels, groups, parts, names,
                      [f"give fewer --folds (at most {most} beside the test part)" if most >= 2 else
                       "add patients/groups that hold the missing class",
                       "carve no test part (--test-fraction 0)"], what="part")
    return dict(zip(groups.tolist(), parts.tolist()))


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
