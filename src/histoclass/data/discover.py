"""One entry point, `discover(path)`, that recognises how a data set is laid out.

Layouts, tried in this order:
- a `.npz` file with MedMNIST keys (`train_images`, `train_labels`, `val_*`, `test_*`);
- a manifest CSV (`path,label` and optionally `group`/`patient`, `split`), given directly or as
  `manifest.csv` inside the folder;
- the original project's `images/trainSet/{0,1}` and `images/testSet/{0,1}` (the folder or its `images/`);
- the Kaggle IDC tree `<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<C>.png`;
- plain class folders `0`/`1` or `benign`/`malignant` (any case), searched recursively.
"""
from __future__ import annotations

import csv
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import HistoclassError
from ..fileio import printable
from .records import (IMAGE_EXTENSIONS, JUNK_NAMES, PARTS, ImageRecord, folder_label,
                      parse_idc_name, parse_label)

log = logging.getLogger(__name__)

TRAINSET_TESTSET_PARTS = {"trainSet": "train", "testSet": "test"}
GROUP_COLUMNS = ("group", "patient", "patient_id")


@dataclass
class Dataset:
    """What discovery found: records in a stable order, the layout's name, and what it skipped."""

    root: Path
    layout: str
    records: list[ImageRecord]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.records], dtype=np.int64)

    @property
    def groups(self) -> np.ndarray:
        return np.array([r.group for r in self.records], dtype=object)

    def summary(self) -> str:
        num_positive = int(self.labels.sum()) if self.records else 0
        num_groups = len({r.group for r in self.records})
        return (f"{self.layout} layout at {self.root}: {len(self.records)} images "
                f"({num_positive} malignant, {len(self.records) - num_positive} benign) "
                f"from {num_groups} patients/groups")


def discover(path: str | os.PathLike) -> Dataset:
    """Finds the images under `path` and their labels; a clear error when nothing fits."""
    path = Path(path).expanduser()
    if not path.exists():
        raise HistoclassError(
            f"no such file or folder: {path}; give --data a folder of images, a manifest CSV "
            "or a .npz file (or run `histoclass synth DIR` to make demo data)")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".npz":
            dataset = _discover_npz(path)
        elif suffix == ".csv":
            dataset = _discover_manifest(path)
        else:
            raise HistoclassError(
                f"{path} is a file but neither a manifest .csv nor a .npz; "
                "give --data the folder that holds the images instead")
    elif (path / "manifest.csv").is_file():
        dataset = _discover_manifest(path / "manifest.csv")
    elif (pair_root := _trainset_testset_root(path)) is not None:
        dataset = _discover_trainset_testset(pair_root)
    else:
        dataset = _discover_tree(path)
    _check_usable(dataset)
    log.info("found %s", printable(dataset.summary()))
    if dataset.skipped:
        log.warning("skipped %d files while looking for images (listed in the log)", len(dataset.skipped))
        for skipped_path, reason in dataset.skipped:
            log.debug("skipped %s: %s", printable(skipped_path), printable(reason))
    return dataset


def _check_usable(dataset: Dataset) -> None:
    if not dataset.records:
        raise HistoclassError(
            f"found no images under {dataset.root}; expected .png/.jpg/.tif files in class folders "
            "(0/1 or benign/malignant), the IDC layout, a manifest.csv or a .npz")


# ---- walking folders ---------------------------------------------------------------------

def walk_images(root: Path | str, skipped: list[tuple[str, str]]) -> list[str]:
    """All image files below `root`, sorted; junk and symlink loops are noted in `skipped`."""
    return [path for path, _ in _walk(str(root), skipped)]


def _walk(root: str, skipped: list[tuple[str, str]]) -> list[tuple[str, bool]]:
    """(path, is a symbolic link) of every image file below `root`, in os.walk's order.

    Works on strings and `os.scandir` entries, whose type comes with the listing: at IDC scale
    (277,524 files) pathlib objects and a stat per file cost more than the walk itself.
    Symlinked folders are followed once each, so a link that points back up the tree is seen
    and reported instead of walked forever.
    """
    found: list[tuple[str, bool]] = []
    seen_dirs: set[str] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in seen_dirs:
            skipped.append((folder, "a link to a folder already searched (a loop, or a second "
                                    "path to the same images)"))
            continue
        seen_dirs.add(real)
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as err:
            skipped.append((folder, f"folder cannot be read ({err.strerror or err})"))
            continue
        subfolders = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                if not entry.name.startswith("."):
                    subfolders.append(entry.path)
                continue
            lower = entry.name.lower()
            if lower in JUNK_NAMES or lower.startswith("._"):
                skipped.append((entry.path, "system file, not an image"))
            elif os.path.splitext(lower)[1] in IMAGE_EXTENSIONS:
                found.append((entry.path, entry.is_symlink()))
        stack.extend(reversed(subfolders))
    return found


def _trainset_testset_root(path: Path) -> Path | None:
    for candidate in (path, path / "images"):
        if (candidate / "trainSet").is_dir() and (candidate / "testSet").is_dir():
            return candidate
    return None


def _discover_trainset_testset(root: Path) -> Dataset:
    skipped: list[tuple[str, str]] = []
    records: list[ImageRecord] = []
    for folder_name, part in TRAINSET_TESTSET_PARTS.items():
        part_root = root / folder_name
        for file_path in walk_images(part_root, skipped):
            record = _record_from_tree(str(root), file_path, skipped, part=part)  # groups keep the part name
            if record is not None:
                records.append(record)
    return Dataset(root, "trainSet/testSet", records, skipped)


def _discover_tree(root: Path) -> Dataset:
    """The IDC tree or plain class folders; IDC names give patient and coordinates."""
    skipped: list[tuple[str, str]] = []
    files = _walk(str(root), skipped)
    records: list[ImageRecord] = []
    seen_idc: dict[str, int] = {}  # IDC file name -> record index
    seen_real: dict[str, str] = {}  # the file itself (links resolved) -> its first path
    real_folders: dict[str, str] = {}
    for file_path, is_link in files:
        folder, name = os.path.split(file_path)
        if folder not in real_folders:
            real_folders[folder] = os.path.realpath(folder)
        real = os.path.realpath(file_path) if is_link else os.path.join(real_folders[folder], name)
        if real in seen_real:  # a link to an image that is also found under its own name
            skipped.append((file_path, f"the same file as {seen_real[real]} (through a link)"))
            continue
        seen_real[real] = file_path
        record = _record_from_tree(str(root), file_path, skipped)
        if record is None:
            continue
        if record.x is not None:
            # The Kaggle archive holds the whole tree twice (IDC_regular_ps50_idx5/): a patch
            # name is unique, so keep its first copy only.
            previous = seen_idc.get(name)
            if previous is not None:
                skipped.append((file_path, f"duplicate of {records[previous].source}"))
                continue
            seen_idc[name] = len(records)
        records.append(record)
    num_idc = len(seen_idc)
    layout = "idc" if num_idc and num_idc == len(records) else "folders"
    if not records and files:
        raise HistoclassError(
            f"found {len(files)} images under {root} but could not tell their labels: put them in "
            "class folders named 0/1 or benign/malignant, or list them in a manifest.csv "
            "(path,label)")
    return Dataset(root, layout, records, skipped)


def _record_from_tree(root: str, file_path: str, skipped: list[tuple[str, str]],
                      part: str | None = None) -> ImageRecord | None:
    # Paths from _walk start with `root` itself; slicing is much cheaper than os.path.relpath.
    if file_path.startswith(root):
        relative = file_path[len(root):].lstrip(os.sep)
    else:
        relative = os.path.relpath(file_path, root)
    parts = relative.split(os.sep)
    name = parts[-1]
    idc = parse_idc_name(name)
    label = None
    class_depth = None
    for depth, folder in enumerate(parts[:-1]):
        found = folder_label(folder)
        if found is not None:  # the nearest class folder above the file wins
            label, class_depth = found, depth
    if idc is not None:
        if label is not None and label != idc.label:
            skipped.append((file_path, f"file name says class {idc.label} but it lies in "
                                       f"folder {parts[class_depth]!r}"))
            return None
        return ImageRecord(file_path, idc.label, idc.patient_id, idc.x, idc.y, part)
    if label is None:
        skipped.append((file_path, "not inside a class folder (0/1, benign/malignant)"))
        return None
    # Without patient ids, images of one folder are kept together: folders below the class
    # folder usually are patients or slides; an image directly in it is its own group.
    inner = parts[class_depth + 1:-1]
    outer = parts[:class_depth]
    stem = os.path.splitext(name)[0]
    group = "/".join(outer + inner) if inner else f"{'/'.join(outer)}/{stem}".lstrip("/")
    return ImageRecord(file_path, label, group, part=part)


# ---- manifest CSV ------------------------------------------------------------------------

def _discover_manifest(csv_path: Path) -> Dataset:
    root = csv_path.parent.resolve()
    skipped: list[tuple[str, str]] = []
    records: list[ImageRecord] = []
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = {c.strip().lower(): c for c in (reader.fieldnames or [])}
            missing = [c for c in ("path", "label") if c not in columns]
            if missing:
                raise HistoclassError(
                    f"{csv_path} has no {' or '.join(missing)} column (found: "
                    f"{', '.join(columns) or 'none'}); a manifest needs a header with path,label "
                    "and optionally group or patient")
            group_column = next((columns[c] for c in GROUP_COLUMNS if c in columns), None)
            split_column = columns.get("split")
            first_line: dict[str, int] = {}  # resolved image path -> manifest line
            for row in reader:
                where = f"{csv_path.name} line {reader.line_num}"
                found = _manifest_row(row, columns, group_column, split_column, root, where, skipped)
                if found is None:
                    continue
                record, resolved = found
                if resolved in first_line:
                    skipped.append((record.source, f"{where}: the same image as line "
                                                   f"{first_line[resolved]}, which is used"))
                    continue
                first_line[resolved] = reader.line_num
                records.append(record)
    except UnicodeDecodeError as err:
        raise HistoclassError(f"{csv_path} is not UTF-8 text ({err.reason}); save it as UTF-8 CSV") from err
    except csv.Error as err:
        raise HistoclassError(f"{csv_path} is not a readable CSV ({err}); check its quoting") from err
    except OSError as err:
        raise HistoclassError(f"{csv_path} cannot be read ({err.strerror or err})") from err
    return Dataset(root, "manifest", records, skipped)


def _manifest_row(row: dict, columns: dict, group_column: str | None, split_column: str | None,
                  root: Path, where: str, skipped: list[tuple[str, str]]) -> tuple[ImageRecord, str] | None:
    """The row's record and the image's resolved path, or None when the row is skipped."""
    raw_path = (row.get(columns["path"]) or "").strip()
    label = parse_label(row.get(columns["label"]) or "", where)
    if not raw_path:
        raise HistoclassError(f"{where}: the path is empty; give each row the image's path")
    try:
        file_path = root / raw_path
        resolved = file_path.resolve()
        # Outside the folder (../, an absolute path, a link out of it) is never read: a shared
        # manifest must not point histoclass at the rest of the disk.
        if not resolved.is_relative_to(root):
            skipped.append((raw_path, f"{where}: points outside the manifest's folder {root}"))
            return None
        if not resolved.is_file():
            skipped.append((str(file_path), f"{where}: listed in the manifest but missing"))
            return None
    except (OSError, ValueError) as err:  # a NUL byte, a name too long for the file system
        skipped.append((raw_path, f"{where}: not a usable path ({err})"))
        return None
    part = None
    if split_column is not None and (row.get(split_column) or "").strip():
        part = row[split_column].strip().lower()
        if part == "validation":
            part = "val"
        if part not in PARTS:
            raise HistoclassError(f"{where}: split {part!r} is not one of train, val, test")
    group = (row.get(group_column) or "").strip() if group_column else ""
    idc = parse_idc_name(file_path.name)
    if not group:
        group = idc.patient_id if idc else raw_path
    return ImageRecord(str(file_path), label, group, idc.x if idc else None,
                       idc.y if idc else None, part), str(resolved)


# ---- MedMNIST-style npz ------------------------------------------------------------------

def _discover_npz(npz_path: Path) -> Dataset:
    """MedMNIST arrays. Their BreastMNIST labels are 0 = malignant, 1 = normal or benign: mapped
    here to the project's 0 = benign, 1 = malignant. An npz that holds `label_convention` set to
    `benign=0` is taken as already in the project's convention."""
    try:
        with np.load(npz_path, allow_pickle=False) as arrays:
            keys = set(arrays.files)
            convention = str(arrays["label_convention"]) if "label_convention" in keys else "medmnist"
            parts = [p for p in PARTS if f"{p}_images" in keys]
            if not parts:
                raise HistoclassError(
                    f"{npz_path} holds none of train_images, val_images, test_images "
                    f"(found: {', '.join(sorted(keys)) or 'nothing'}); give a MedMNIST-style .npz")
            records = []
            for part in parts:
                if f"{part}_labels" not in keys:
                    raise HistoclassError(f"{npz_path} has {part}_images but no {part}_labels")
                labels = arrays[f"{part}_labels"].reshape(-1)
                shape = arrays[f"{part}_images"].shape
                _check_npz_images(npz_path, part, shape, arrays[f"{part}_images"].dtype)
                num_images = shape[0]
                if labels.shape[0] != num_images:
                    raise HistoclassError(
                        f"{npz_path}: {part}_images has {num_images} images but {part}_labels has "
                        f"{labels.shape[0]} labels")
                if labels.dtype.kind not in "biuf":
                    raise HistoclassError(f"{npz_path}: {part}_labels holds {labels.dtype} values, not numbers")
                values = set(np.unique(labels).tolist())
                if not values <= {0, 1}:
                    raise HistoclassError(
                        f"{npz_path}: {part}_labels holds {sorted(values)[:6]}, not only 0 and 1; "
                        "histoclass classifies benign versus malignant")
                if convention != "benign=0":
                    labels = 1 - labels
                for index, label in enumerate(labels.tolist()):
                    source = f"{npz_path}::{part}[{index}]"
                    records.append(ImageRecord(source, int(label), f"{part}-{index}", part=part))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise HistoclassError(f"{npz_path} is not a readable .npz file ({err})") from err
    return Dataset(npz_path, "npz", records, [])


def _check_npz_images(npz_path: Path, part: str, shape: tuple, dtype: np.dtype) -> None:
    """(N, H, W) grey or (N, H, W, 1|3|4) images of numbers, at least 8 pixels a side."""
    channels_ok = len(shape) == 3 or (len(shape) == 4 and shape[3] in (1, 3, 4))
    if not channels_ok or min(shape[1:3], default=0) < 8 or dtype.kind not in "biuf":
        raise HistoclassError(
            f"{npz_path}: {part}_images has shape {shape} and type {dtype}; expected numbers of "
            "shape (N, H, W) or (N, H, W, 1|3|4) with H and W at least 8")
