"""Property-based tests (hypothesis) of the two parsers that read text from data: the IDC file
name parser and the manifest reader. Whatever the text, they answer or refuse with a
HistoclassError; they never crash, and never accept what does not fit."""
from __future__ import annotations

import csv
import io
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from histoclass.data import discover, parse_idc_name
from histoclass.data.records import LABEL_WORDS
from histoclass.errors import HistoclassError

PATIENT = st.from_regex(r"[A-Za-z0-9-]{1,12}", fullmatch=True)
COORDINATE = st.integers(min_value=0, max_value=9_999_999)


# ---- parse_idc_name ------------------------------------------------------------------------

@given(PATIENT, COORDINATE, COORDINATE, st.sampled_from([0, 1]))
def test_idc_name_round_trip(patient, x, y, label):
    parsed = parse_idc_name(f"{patient}_idx5_x{x}_y{y}_class{label}.png")
    assert parsed is not None
    assert (parsed.patient_id, parsed.x, parsed.y, parsed.label) == (patient, x, y, label)


@given(st.text(max_size=80))
@example("10253_idx5_x1001_y1351_class1.png\n")
@example("10253_idx5_x١٠_y1_class1.png")  # Arabic-Indic digits
@example("../10253_idx5_x1_y1_class1.png")
def test_idc_parser_never_crashes_and_accepts_only_the_pattern(name):
    parsed = parse_idc_name(name)
    if parsed is not None:
        assert name.isascii() and name == name.strip()
        assert re.fullmatch(r"[A-Za-z0-9-]+_idx5_x[0-9]{1,7}_y[0-9]{1,7}_class[01]\.png", name)
        assert name.startswith(parsed.patient_id + "_idx5_")
        assert name.endswith(f"_class{parsed.label}.png")
        assert 0 <= parsed.x <= 9_999_999 and 0 <= parsed.y <= 9_999_999


@given(PATIENT, COORDINATE, COORDINATE, st.sampled_from([0, 1]), st.text(min_size=1, max_size=10))
def test_idc_name_with_anything_around_is_refused(patient, x, y, label, extra):
    name = f"{patient}_idx5_x{x}_y{y}_class{label}.png"
    assert parse_idc_name(name + extra) is None
    assume(not re.fullmatch(r"[A-Za-z0-9-]+_?", extra))  # these just extend the patient id
    assert parse_idc_name(extra + name) is None


@given(PATIENT, COORDINATE, COORDINATE, st.integers(min_value=2, max_value=9))
def test_idc_label_other_than_0_1_is_refused(patient, x, y, label):
    assert parse_idc_name(f"{patient}_idx5_x{x}_y{y}_class{label}.png") is None


# ---- the manifest reader -------------------------------------------------------------------

IMAGES = ("img/a.png", "img/b.png", "img/c d.png", "img/ünï cödé.png", "img/sub/e.tif")
SAME_AS_A = ("./img/a.png", "img/../img/a.png", "img//a.png")
MISSING = ("img/missing.png", "img/sub", "nothing/at/all.jpg")
OUTSIDE = ("../outside.png", "/etc/hostname", "img/../../outside.png", "link_out.png")
VALID_LABELS = ("0", "1", "benign", "malignant", " Benign ", "MALIGNANT", "\tmalignant")
INVALID_LABELS = ("2", "", "maybe", "1.0", "-1", "malignant?", "tumour")

path_text = st.one_of(st.sampled_from(IMAGES + SAME_AS_A + MISSING + OUTSIDE),
                      st.text(max_size=30))
label_text = st.one_of(st.sampled_from(VALID_LABELS), st.sampled_from(INVALID_LABELS), st.text(max_size=12))
group_text = st.one_of(st.just(""), st.text(max_size=12))
rows = st.lists(st.tuples(path_text, label_text, group_text), max_size=12)


def build_folder(root: Path) -> None:
    for name in IMAGES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")  # discovery never opens the images
    (root.parent / "outside.png").write_bytes(b"")
    (root / "link_out.png").symlink_to(root.parent / "outside.png")


def expected_outcome(root: Path, manifest_rows) -> tuple[str, object]:
    """What the manifest's rules say: ("error", pattern) or ("records", [(path, label, group)])."""
    kept, seen = [], set()
    for raw_path, label, group in manifest_rows:
        if label.strip().lower() not in LABEL_WORDS:
            return "error", "is not one of 0, 1, benign, malignant"
        path = raw_path.strip()
        if not path:
            return "error", "the path is empty"
        if path in IMAGES or path in SAME_AS_A:
            resolved = (root / path).resolve()
            if resolved not in seen:
                seen.add(resolved)
                kept.append((str(root / path), LABEL_WORDS[label.strip().lower()], group.strip() or path))
    if not kept:
        return "error", "found no images"
    return "records", kept


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows)
def test_manifest_reader(manifest_rows):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        root.mkdir()
        build_folder(root)
        (root / "manifest.csv").write_text("")  # so a row naming the manifest itself counts as a file
        # Free text that happens to name one of the files would be a fine row, but not the one
        # the expectation assumes; leave it to the sampled names.
        for raw_path, _, _ in manifest_rows:
            if raw_path.strip() not in IMAGES + SAME_AS_A:
                try:
                    assume(not (root / raw_path.strip()).resolve().is_file())
                except (OSError, ValueError):
                    pass
        buffer = io.StringIO()
        # Quote every field: Python's writer leaves a lone "\r" unquoted, which is a line break.
        writer = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL)
        writer.writerow(["path", "label", "group"])
        writer.writerows(manifest_rows)
        (root / "manifest.csv").write_text(buffer.getvalue(), encoding="utf-8")

        kind, expected = expected_outcome(root.resolve(), manifest_rows)
        if kind == "error":
            with pytest.raises(HistoclassError, match=re.escape(expected)):
                discover(root)
            return
        dataset = discover(root)
        assert [(r.source, r.label, r.group) for r in dataset.records] == expected
        assert len(dataset.records) + len(dataset.skipped) == len(manifest_rows)
        for _, reason in dataset.skipped:  # each skipped row is listed with its line
            assert re.search(r"manifest\.csv line \d+: ", reason), reason


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=300))
def test_manifest_of_any_bytes_never_crashes(content):
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "manifest.csv"
        manifest.write_bytes(content)
        try:
            dataset = discover(manifest)
        except HistoclassError as err:
            assert "\n" not in str(err), str(err)  # one line, whatever the bytes
        else:
            assert dataset.records  # an empty result is refused, never returned
