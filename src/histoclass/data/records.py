"""Plain records for images, and the parsers for the names and labels they come with."""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import HistoclassError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
# Files that scanners, file managers and exports leave beside images.
JUNK_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini", "._.ds_store"})

# <patient>_idx5_x<X>_y<Y>_class<C>.png, as in the Kaggle "Breast Histopathology Images" set.
# ASCII digits only (\d would take other scripts' digits too); matched whole, so a trailing
# newline, which `$` lets through, is no IDC name.
IDC_NAME = re.compile(
    r"(?P<patient>[A-Za-z0-9-]+)_idx5_x(?P<x>[0-9]{1,7})_y(?P<y>[0-9]{1,7})_class(?P<label>[01])\.png",
    re.ASCII)

LABEL_WORDS = {"0": 0, "1": 1, "benign": 0, "malignant": 1}
PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageRecord:
    """One image: where its pixels are, its label, and the patient or group it belongs to.

    `source` is a file path, or `<file.npz>::<part>[<index>]` for images held in an array file.
    `part` is the split the data itself defines (trainSet/testSet folders, npz keys, a manifest column), or
    None where the data leaves the split to us. `x`/`y` are the patch's position on its slide.
    """

    source: str
    label: int
    group: str
    x: int | None = None
    y: int | None = None
    part: str | None = None


@dataclass(frozen=True)
class IdcName:
    patient_id: str
    x: int
    y: int
    label: int


def parse_idc_name(name: str) -> IdcName | None:
    """Parses an IDC patch file name; None when the name does not follow the pattern."""
    match = IDC_NAME.fullmatch(name)
    if match is None:
        return None
    return IdcName(match["patient"], int(match["x"]), int(match["y"]), int(match["label"]))


def parse_label(value: object, where: str) -> int:
    """Maps `0`/`1`/`benign`/`malignant` (any case, spaces ignored) to 0 or 1."""
    text = str(value).strip().lower()
    if text in LABEL_WORDS:
        return LABEL_WORDS[text]
    raise HistoclassError(
        f"{where}: label {str(value)[:40]!r} is not one of 0, 1, benign, malignant; "
        "fix the label or remove the row")


def folder_label(name: str) -> int | None:
    """The label a class folder's name gives (`0`, `1`, `benign`, `malignant`), else None."""
    return LABEL_WORDS.get(name.strip().lower())
