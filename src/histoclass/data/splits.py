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

from ..config import SPLIT_BALANCES
from ..errors import HistoclassError
from .records import PARTS

log = logging.getLogger(__name__)

# The search (see `_search`): several seeded starts and group swaps for up to SEARCH_GROUPS
# groups; one start and moves only up to MOVE_GROUPS; beyond, the first deal alone (many small
# groups deal out closely anyway, and each pass over them costs Python time).
SEARCH_GROUPS = 300
MOVE_GROUPS = 3000
MAX_PASSES = 30
TOLERANCE = 1e-12


def split_by_group(labels: np.ndarray, groups: np.ndarray, fractions: Sequence[float] = (0.7, 0.15, 0.15),
                   seed: int = 0, given: Sequence[str | None] | None = None,
                   balance: str = "patients") -> np.ndarray:
    """Assigns each image a part ('train', 'val' or 'test'), whole groups at a time.

    Parts the data already gives (`given`, e.g. the testSet of images/trainSet + testSet) are kept; parts it
    lacks are carved out of its training images with the same fractions. Every carved part and
    the train part hold both classes, and each part's malignant share is near the whole's
    (see `_search`); where the groups cannot give every part both classes, a HistoclassError
    names the parts, the counts and the fix.

    `balance` says what the fractions share out: "images" (each part's benign and malignant
    images), or "patients" (those, and each part's number of patients/groups as well). They
    differ where patients differ in size: of idc-sample's 153 patients (21 with hundreds of
    patches, 130 with about 30), "images" trains on 60 patients, "patients" on about 107.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups, dtype=object)
    count_groups = counts_groups(balance)
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
    parts[to_assign] = deal_groups(labels[to_assign], groups[to_assign], targets, seed, count_groups)
    for part in targets:
        if not (parts[to_assign] == part).any():
            raise HistoclassError(f"the {part} part is empty; the data has too few patients/groups for a split "
                                  "(add data, or give a split with --split-file)")
    fixes = ["give the parts yourself with --split-file", "add patients/groups that hold the missing class"]
    if "test" in targets:
        fixes.append("carve no test part (--test-fraction 0)")
    require_two_sided(labels[to_assign], groups[to_assign], parts[to_assign], list(targets), fixes)
    return parts.astype(str)


def fold_by_group(labels: np.ndarray, groups: np.ndarray, num_folds: int, seed: int = 0,
                  balance: str = "patients") -> np.ndarray:
    """Fold number (0 .. num_folds - 1) of each image for cross-validation: whole groups at a
    time, every fold with both classes and its share of images and of positives (stratified and
    grouped), and with `balance` "patients" its share of the groups too; a HistoclassError where
    the groups cannot give every fold both classes."""
    count_groups = counts_groups(balance)
    labels = np.asarray(labels)
    groups = np.asarray(groups, dtype=object)
    num_groups = len(set(groups.astype(str)))
    if num_folds < 2 or num_folds > num_groups:
        raise HistoclassError(f"--folds {num_folds} does not fit data with {num_groups} patients/groups; "
                              f"give a number from 2 to {num_groups}")
    names = [str(k) for k in range(num_folds)]
    folds = deal_groups(labels, groups, {k: 1.0 / num_folds for k in names}, seed, count_groups)
    most = max_two_sided_parts(labels, groups)
    fixes = [f"give fewer --folds (at most {most})"] if most >= 2 else []
    require_two_sided(labels, groups, folds, names, [*fixes, "add patients/groups that hold the missing class"],
                      what="fold")
    return folds.astype(int)


def counts_groups(balance: str) -> bool:
    """Whether a split `balance` shares out the patients/groups as well as the images."""
    if balance not in SPLIT_BALANCES:
        raise HistoclassError(f"split balance {balance!r} is not one of {', '.join(SPLIT_BALANCES)}")
    return balance == "patients"


def max_two_sided_parts(labels: np.ndarray, groups: np.ndarray) -> int:
    """How many parts at most can each hold both classes: the number of groups holding the rarer one."""
    labels = np.asarray(labels)
    groups = np.asarray(groups, dtype=object).astype(str)
    return min(len(set(groups[labels == 0])), len(set(groups[labels == 1])))


def require_two_sided(labels: np.ndarray, groups: np.ndarray, parts: np.ndarray, names: Sequence[str],
                      fixes: Sequence[str], what: str = "part") -> None:
    """Raises a HistoclassError naming the parts in `names` that hold one class only (with their
    counts), how many groups hold each class, and `fixes`."""
    labels = np.asarray(labels)
    groups = np.asarray(groups, dtype=object).astype(str)
    parts = np.asarray(parts, dtype=object)
    one_sided = [name for name in names if not _both(labels[parts == name])]
    if not one_sided:
        return
    described = "; ".join(
        f"{'fold ' + name if name.isdigit() else 'the ' + name + ' part'} would hold "
        f"{int((labels[parts == name] == 0).sum())} benign and "
        f"{int((labels[parts == name] == 1).sum())} malignant images "
        f"({len(set(groups[parts == name]))} patients/groups)" for name in one_sided)
    benign_groups = len(set(groups[labels == 0]))
    malignant_groups = len(set(groups[labels == 1]))
    raise HistoclassError(
        f"cannot give each of the {len(names)} {what}s both classes: {described}. Of the "
        f"{len(set(groups))} patients/groups, benign images are in {benign_groups} and malignant "
        f"images in {malignant_groups}, and every {what} needs one of each; {', or '.join(fixes)}")


def _both(labels: np.ndarray) -> bool:
    return bool(0 < labels.sum() < len(labels))


def deal_groups(labels: np.ndarray, groups: np.ndarray, targets: dict[str, float], seed: int,
                count_groups: bool = False) -> np.ndarray:
    """Part name of each image: whole groups, `targets` {part: share of images, and with
    `count_groups` share of groups too}, chosen by a seeded search (see `_search`)."""
    unique, inverse = np.unique(groups.astype(str), return_inverse=True)
    positives = np.bincount(inverse, weights=np.asarray(labels, dtype=float), minlength=len(unique))
    negatives = np.bincount(inverse, minlength=len(unique)) - positives
    names = np.array(list(targets), dtype=object)
    want = np.array([targets[p] for p in names], dtype=float)
    assignment = _search(positives, negatives, want / want.sum(), np.random.default_rng(seed), count_groups)
    return names[assignment][inverse]


def _search(positives: np.ndarray, negatives: np.ndarray, want: np.ndarray,
            rng: np.random.Generator, count_groups: bool = False) -> np.ndarray:
    """Part index of each group: the best of a few seeded starts, each improved by moving (and,
    for few groups, swapping) single groups while that lowers the score. The score is, first,
    how many (part, class) pairs are empty although the data holds that class, then the distance
    of each part's malignant and benign image counts from its targets (each as a share of the
    class's images), plus, with `count_groups`, the distance of its number of groups from its
    target (as a share of the groups)."""
    num_groups, num_parts = len(positives), len(want)
    starts = 8 if num_groups <= SEARCH_GROUPS else 1
    best, best_score = None, None
    for _ in range(starts):
        assignment = _start(positives, negatives, want, rng)
        score = _improve(assignment, positives, negatives, want, rng, swaps=num_groups <= SEARCH_GROUPS,
                         passes=MAX_PASSES if num_groups <= MOVE_GROUPS else 0, count_groups=count_groups)
        if best_score is None or score < best_score:
            best, best_score = assignment.copy(), score
    return best


def _start(positives, negatives, want, rng) -> np.ndarray:
    """A first assignment: every part one group of each class where there are enough such groups,
    then the other groups, large ones first, each to the part that lacks most of its classes."""
    num_groups, num_parts = len(positives), len(want)
    sizes = positives + negatives
    assignment = np.full(num_groups, -1)
    for holds in (negatives > 0, positives > 0):
        for part in rng.permutation(num_parts):
            if (holds & (assignment == part)).any():
                continue
            free = np.flatnonzero(holds & (assignment < 0))
            if not len(free):
                break
            fitting = free[sizes[free] <= want[part] * sizes.sum()]
            assignment[rng.choice(fitting if len(fitting) else free[sizes[free] == sizes[free].min()])] = part
    placed = assignment >= 0
    have_pos = np.bincount(assignment[placed], weights=positives[placed], minlength=num_parts).tolist()
    have_neg = np.bincount(assignment[placed], weights=negatives[placed], minlength=num_parts).tolist()
    goal_pos = (want * positives.sum()).tolist()
    goal_neg = (want * negatives.sum()).tolist()
    total_pos, total_neg = max(float(positives.sum()), 1.0), max(float(negatives.sum()), 1.0)
    group_pos, group_neg, group_size = positives.tolist(), negatives.tolist(), sizes.tolist()
    # Plain Python over the parts: this loop runs once per group, up to every image of a set
    # whose images are their own groups.
    for group in sorted(rng.permutation(np.flatnonzero(~placed)).tolist(), key=lambda g: -group_size[g]):
        best, best_score = 0, -np.inf
        for part in range(num_parts):
            need_pos = (goal_pos[part] - have_pos[part]) / total_pos
            need_neg = (goal_neg[part] - have_neg[part]) / total_neg
            score = need_pos * (group_pos[group] > 0) + need_neg * (group_neg[group] > 0)
            score += (need_pos + need_neg) * 1e-3  # ties: the emptier part
            if score > best_score:
                best, best_score = part, score
        assignment[group] = best
        have_pos[best] += group_pos[group]
        have_neg[best] += group_neg[group]
    return assignment


def _improve(assignment, positives, negatives, want, rng, swaps: bool, passes: int,
             count_groups: bool = False) -> tuple[int, float]:
    """Moves (and swaps) groups between parts while the score falls; returns the final score."""
    num_parts, num_groups = len(want), len(assignment)
    totals = (float(positives.sum()), float(negatives.sum()))
    goal_pos = [w * totals[0] for w in want]
    goal_neg = [w * totals[1] for w in want]
    goal_count = [w * num_groups for w in want]
    group_weight = 1.0 if count_groups else 0.0
    pos = [float(positives[assignment == p].sum()) for p in range(num_parts)]
    neg = [float(negatives[assignment == p].sum()) for p in range(num_parts)]
    count = [float((assignment == p).sum()) for p in range(num_parts)]
    group_pos, group_neg = positives.tolist(), negatives.tolist()

    def part_score(p_pos: float, p_neg: float, p_count: float, part: int) -> tuple[int, float]:
        empty = int(totals[0] > 0 and p_pos == 0) + int(totals[1] > 0 and p_neg == 0)
        return empty, (abs(p_pos - goal_pos[part]) / max(totals[0], 1)
                       + abs(p_neg - goal_neg[part]) / max(totals[1], 1)
                       + group_weight * abs(p_count - goal_count[part]) / num_groups)

    def change(a: int, b: int, d_pos: float, d_neg: float, d_count: float) -> tuple[int, float]:
        """Score change when d_pos/d_neg images (d_count groups) move from part a to part b."""
        before = [part_score(pos[a], neg[a], count[a], a), part_score(pos[b], neg[b], count[b], b)]
        after = [part_score(pos[a] - d_pos, neg[a] - d_neg, count[a] - d_count, a),
                 part_score(pos[b] + d_pos, neg[b] + d_neg, count[b] + d_count, b)]
        return (after[0][0] + after[1][0] - before[0][0] - before[1][0],
                after[0][1] + after[1][1] - before[0][1] - before[1][1])

    for _ in range(passes):
        improved = False
        order = rng.permutation(len(assignment))
        for g in order:
            for b in range(num_parts):
                a = assignment[g]
                if b != a and change(a, b, group_pos[g], group_neg[g], 1.0) < (0, -TOLERANCE):
                    _shift(pos, neg, count, a, b, group_pos[g], group_neg[g], 1.0)
                    assignment[g] = b
                    improved = True
        if swaps:
            for i, g in enumerate(order):
                for h in order[i + 1:]:
                    a, b = assignment[g], assignment[h]
                    if a == b:
                        continue
                    d_pos, d_neg = group_pos[g] - group_pos[h], group_neg[g] - group_neg[h]
                    if change(a, b, d_pos, d_neg, 0.0) < (0, -TOLERANCE):
                        _shift(pos, neg, count, a, b, d_pos, d_neg, 0.0)
                        assignment[g], assignment[h] = b, a
                        improved = True
        if not improved:
            break
    scores = [part_score(pos[p], neg[p], count[p], p) for p in range(num_parts)]
    return sum(s[0] for s in scores), sum(s[1] for s in scores)


def _shift(pos: list, neg: list, count: list, a: int, b: int, d_pos: float, d_neg: float,
           d_count: float) -> None:
    pos[a] -= d_pos
    neg[a] -= d_neg
    count[a] -= d_count
    pos[b] += d_pos
    neg[b] += d_neg
    count[b] += d_count


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
    """Parts from a published list. Patients/groups the list does not name train, unless it names a
    train part itself: then they are left out ('')."""
    named_train = "train" in assignment.values()
    parts = np.array([assignment.get(str(g), "" if named_train else "train") for g in groups], dtype=object)
    unnamed = sorted({str(g) for g in groups} - set(assignment))
    if not any(str(g) in assignment for g in groups):
        raise HistoclassError(
            "none of the data's patients/groups is in the split file; check that its ids match the "
            "patient ids in the file names")
    if unnamed:
        count = sum(str(g) not in assignment for g in groups)
        if named_train:
            log.info("%d images of %d patients/groups not in the split file are left out (it names a "
                     "train part)", count, len(unnamed))
        else:
            log.info("%d images of %d patients/groups not in the split file train (it names no train "
                     "part)", count, len(unnamed))
    return parts.astype(str)


def describe_parts(labels: np.ndarray, groups: np.ndarray, parts: np.ndarray,
                   names: Sequence[str] = PARTS) -> list[str]:
    """One line per part: its patients/groups and its images of each class (for the log)."""
    labels = np.asarray(labels)
    groups = np.asarray(groups, dtype=object).astype(str)
    parts = np.asarray(parts).astype(str)
    lines = []
    for name in names:
        chosen = parts == str(name)
        if not chosen.any():
            continue
        lines.append(f"{name}: {len(set(groups[chosen]))} patients/groups, "
                     f"{int((labels[chosen] == 0).sum())} benign and {int((labels[chosen] == 1).sum())} "
                     f"malignant images ({labels[chosen].mean():.0%} malignant)")
    return lines
