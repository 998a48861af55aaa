"""The bad-input battery: every kind of messy file or folder, through `train`, `evaluate` and
`predict` from the command line. Each is used, skipped and listed, or refused with a one-line
error and exit code 2; none crashes, and no input file changes. docs/bad-inputs.md is the table.

The per-file kinds all live in one data folder, so one small training run, one `predict` and
one `evaluate --data` cover them; the folder- and run-level kinds are refused before any
training starts.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import re
import shutil
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest
from PIL import Image

from histoclass.cli import main
from histoclass.fileio import printable

from conftest import make_idc_tree, patch, write_png

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
TINY_TRAIN = ["--epochs", "1", "--batch-size", "8", "--quiet"]


# ---- helpers shared with the other robustness tests --------------------------------------

def run_cli(args: list) -> tuple[int, str, str]:
    """`histoclass ARGS` in this process: (exit code, stdout, stderr). The handlers the CLI adds
    to the root logger (console, run log file) are removed again, so runs do not log into each
    other's train.log."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)
    return code, out.getvalue(), err.getvalue()


def refused(args: list, match: str) -> str:
    """Runs the CLI, checks it refused with one `error:` line matching `match`, no traceback."""
    code, _, stderr = run_cli(args)
    assert code == 2, f"exit code {code}; stderr:\n{stderr}"
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr
    assert re.search(match, errors[0]), errors[0]
    return errors[0]


def tree_digest(root: Path) -> dict[bytes, str]:
    """Every entry under `root` (links not followed): its kind and content hash, its link
    target or its mode; what `no input file is ever changed` is checked against."""
    digest: dict[bytes, str] = {}
    for folder, dirs, files in os.walk(os.fsencode(root)):
        for name in dirs + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            key = os.path.relpath(path, os.fsencode(root))
            if stat.S_ISLNK(info.st_mode):
                digest[key] = "link:" + os.fsdecode(os.readlink(path))
            elif stat.S_ISREG(info.st_mode):
                with open(path, "rb") as handle:
                    content = hashlib.sha256(handle.read()).hexdigest()
                digest[key] = f"file:{content}:{stat.S_IMODE(info.st_mode):o}:{info.st_mtime_ns}"
            else:
                digest[key] = f"mode:{stat.S_IFMT(info.st_mode):o}"
    return digest


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        return list(csv.DictReader(handle))


# ---- building bad files --------------------------------------------------------------------

RNG = np.random.default_rng(5)
RGB = np.asarray(patch(0, RNG))  # a benign-looking 50x50 patch


def encode(image: np.ndarray, ext: str) -> bytes:
    ok, data = cv2.imencode(ext, image[..., ::-1] if image.ndim == 3 and image.shape[2] == 3 else image)
    assert ok
    return data.tobytes()


def pillow_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A valid-looking PNG whose header claims a vast image: never to be decoded."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(bytes(1000))) + png_chunk(b"IEND", b""))


def corrupt_png() -> bytes:
    data = bytearray(encode(RGB, ".png"))
    start = data.index(b"IDAT") + 40
    data[start:start + 200] = bytes(200)  # zeroed compressed pixels: the CRC no longer matches
    return bytes(data)


def corrupt_jpeg() -> bytes:
    data = bytearray(encode(RGB, ".jpg"))
    data[20:400] = np.random.default_rng(1).integers(0, 255, 380, dtype=np.uint8).tobytes()
    return bytes(data)


def big_png(side: int) -> bytes:
    return pillow_bytes(Image.new("1", (side, side)), "PNG")  # 1 bit a pixel: small to build


@dataclass(frozen=True)
class Kind:
    """One kind of bad file. `make(folder)` writes it and returns the path the tools see.

    `reason`: None when the file is used, else what its skipped-list entry says, for every
    command. `train_reason`: what train and evaluate (which need labels) say where predict,
    which needs none, uses the file."""

    name: str
    make: Callable[[Path], Path]
    reason: str | None = None
    train_reason: str | None = None

    @property
    def discovery_reason(self) -> str | None:
        return self.train_reason or self.reason


def writes(name: str, data: bytes | Callable[[], bytes]) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data() if callable(data) else data)
        return path
    return make


def non_utf8_name(folder: Path) -> Path:
    path = os.fsencode(folder) + b"/latin1_\xe9t\xe9_\xff.png"
    with open(path, "wb") as handle:
        handle.write(encode(RGB, ".png"))
    return Path(os.fsdecode(path))


def link(name: str, target: str | Callable[[Path], str]) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        os.symlink(target(folder) if callable(target) else target, path)
        return path
    return make


def fifo(folder: Path) -> Path:
    path = folder / "named_pipe.png"
    os.mkfifo(path)
    return path


def unreadable(folder: Path) -> Path:
    path = folder / "unreadable.png"
    path.write_bytes(encode(RGB, ".png"))
    path.chmod(0)
    return path


def loop_folder(folder: Path) -> Path:
    path = folder / "loop"
    os.symlink("..", path)  # bad/0/loop -> bad: the walk would never end
    return path


def linked_twice(folder: Path) -> Path:
    (folder / "real_copy.png").write_bytes(encode(RGB, ".png"))
    path = folder / "zz_link_to_real_copy.png"  # sorted after its target
    os.symlink("real_copy.png", path)
    return path


def idc_duplicate(folder: Path) -> Path:
    data = folder.parents[1]  # data/bad/0 -> data
    original = next((data / "10000" / "0").glob("*.png"))
    path = data / "IDC_regular_ps50_idx5" / "10000" / "0" / original.name
    path.parent.mkdir(parents=True)
    shutil.copyfile(original, path)
    return path


def idc_wrong_folder(folder: Path) -> Path:
    return write_png(folder / "10009_idx5_x51_y51_class1.png", RGB)  # says 1, lies in 0/


def outside_class_folder(folder: Path) -> Path:
    return write_png(folder.parents[1] / "unsorted" / "loose.png", RGB)


FILE_KINDS = [
    Kind("truncated PNG", writes("truncated.png", lambda: encode(RGB, ".png")[:300]), "truncated PNG"),
    Kind("corrupt PNG (bad checksum)", writes("corrupt.png", corrupt_png), "damaged PNG .chunk IDAT fails its checksum"),
    Kind("truncated JPEG", writes("truncated.jpg", lambda: encode(RGB, ".jpg")[:400]), "truncated JPEG"),
    Kind("corrupt JPEG (garbled header)", writes("corrupt.jpg", corrupt_jpeg), "damaged JPEG"),
    Kind("truncated TIFF", writes("truncated.tif", lambda: pillow_bytes(Image.fromarray(RGB), "TIFF")[:3000]),
         "damaged TIFF"),
    Kind("corrupt TIFF (header only)", writes("corrupt.tiff", b"II*\x00" + bytes(60)), "damaged TIFF"),
    Kind("zero-byte file", writes("empty.png", b""), "empty file"),
    Kind("text with a .png extension", writes("notes.png", b"scanner export log\nslide 4\n"),
         "text file with an image extension"),
    Kind("HTML page saved as .jpg", writes("page.jpg", b"<!DOCTYPE html><html><body>404</body></html>"),
         "HTML"),
    Kind("binary junk with .tif extension", writes("junk.tif", bytes(range(256)) * 4), "no PNG, JPEG, TIFF"),
    Kind("1x1 image", writes("one_pixel.png", lambda: encode(RGB[:1, :1], ".png")), "too small"),
    Kind("4x4 thumbnail", writes("thumbnail.jpg", lambda: encode(RGB[:4, :4], ".jpg")), "too small"),
    Kind("10,000x10,000 image", writes("huge.png", lambda: big_png(10_000)), "too large.*10000x10000"),
    Kind("decompression bomb (PNG header 100,000 x 100,000)", writes("bomb.png", png_bomb(100_000, 100_000)),
         "too large"),
    Kind("16-bit greyscale PNG", writes("grey16.png", lambda: encode((RGB[..., 0].astype(np.uint16) * 257), ".png"))),
    Kind("16-bit RGB PNG", writes("rgb16.png", lambda: encode(RGB.astype(np.uint16) * 257, ".png"))),
    Kind("RGBA PNG", writes("rgba.png", lambda: pillow_bytes(Image.fromarray(np.dstack([RGB, RGB[..., 0]])), "PNG"))),
    Kind("palette PNG with transparency", writes("palette.png", lambda: pillow_bytes(
        Image.fromarray(RGB).convert("P"), "PNG", transparency=0))),
    Kind("greyscale + alpha PNG", writes("grey_alpha.png", lambda: pillow_bytes(Image.fromarray(RGB).convert("LA"), "PNG"))),
    Kind("32-bit float TIFF", writes("float.tif", lambda: pillow_bytes(
        Image.fromarray(RGB[..., 0].astype(np.float32) / 255), "TIFF"))),
    Kind("CMYK JPEG", writes("cmyk.jpg", lambda: pillow_bytes(Image.fromarray(RGB).convert("CMYK"), "JPEG"))),
    Kind("BMP", writes("bitmap.bmp", lambda: encode(RGB, ".bmp"))),
    Kind("PNG bytes under a .jpg name", writes("really_png.jpg", lambda: encode(RGB, ".png"))),
    Kind("upper-case extension .PNG", writes("UPPER.PNG", lambda: encode(RGB, ".png"))),
    Kind("100x100 patch (resized)", writes("large_patch.png", lambda: encode(cv2.resize(RGB, (100, 100)), ".png"))),
    Kind("unicode file name", writes("tumör 標本 🔬 (1).png", lambda: encode(RGB, ".png"))),
    Kind("file name that is not UTF-8", non_utf8_name),
    Kind("newline and terminal escape in the name", writes("line\nbreak\x1b[31m.png", lambda: encode(RGB, ".png"))),
    Kind("right-to-left override in the name", writes("slide\u202egnp.exe.png", lambda: encode(RGB, ".png"))),
    Kind("spreadsheet formula as name", writes("=HYPERLINK(1).png", b"not an image"), "text file"),
    Kind("damaged file whose name forges a log line", writes("x\nERROR all is well\u202e.png", b"junk"),
         "text file"),
    Kind("broken symbolic link", link("dangling.png", "does_not_exist.png"), "broken symbolic link"),
    Kind("symbolic link to itself", link("self_loop.png", "self_loop.png"), "cannot be read"),
    Kind("link to /dev/zero", link("endless.png", "/dev/zero"), "not a regular file"),
    Kind("named pipe (FIFO)", fifo, "not a regular file"),
    Kind("unreadable file (no permission)", unreadable, "permission denied"),
    Kind(".DS_Store", writes(".DS_Store", b"\x00\x00\x00\x01Bud1"), "system file"),
    Kind("Thumbs.db", writes("Thumbs.db", b"\xd0\xcf\x11\xe0"), "system file"),
    Kind("AppleDouble ._ file", writes("._slide.png", b"\x00\x05\x16\x07"), "system file"),
    Kind("symbolic link loop (folder)", loop_folder, "a link to a folder already searched"),
    Kind("second link to the same image", linked_twice, train_reason="the same file as"),
    Kind("duplicate IDC patch (second copy of the tree)", idc_duplicate, train_reason="duplicate of"),
    Kind("IDC name in the wrong class folder", idc_wrong_folder, train_reason="file name says class 1"),
    Kind("image outside any class folder", outside_class_folder, train_reason="not inside a class folder"),
]


# ---- one training run, one predict, one evaluate over all of them -------------------------

@contextlib.contextmanager
def no_permission(paths: list[Path]):
    """chmod 000 is no barrier to root: there, refuse the open as the kernel would."""
    if not IS_ROOT:
        yield
        return
    real_open = os.open
    blocked = {os.fsencode(p) for p in paths}

    def guarded_open(path, flags, *args, **kwargs):
        if os.fsencode(path) in blocked:
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patcher:
        patcher.setattr(os, "open", guarded_open)
        yield


@dataclass
class Battery:
    data: Path
    paths: dict[str, Path]
    train: tuple[int, str, str]
    run: Path
    predict: tuple[int, str, str]
    predict_csv: Path
    evaluate: tuple[int, str, str]
    evaluate_dir: Path
    digest_before: dict
    digest_after: dict


@pytest.fixture(scope="module")
def battery(tmp_path_factory, trained_run) -> Battery:
    base = tmp_path_factory.mktemp("battery")
    data = make_idc_tree(base / "data", num_patients=6, per_class=4)
    bad = data / "bad" / "0"
    bad.mkdir(parents=True)
    paths = {kind.name: kind.make(bad) for kind in FILE_KINDS}
    before = tree_digest(data)
    cache = base / "cache"
    with no_permission([paths["unreadable file (no permission)"]]):
        train = run_cli(["train", "--data", data, "--out", base / "run", "--cache-dir", cache, *TINY_TRAIN])
        predict = run_cli(["predict", trained_run, data / "bad", data / "IDC_regular_ps50_idx5", data / "unsorted",
                           "-o", base / "predict.csv", "-q"])
        evaluate = run_cli(["--verbose", "evaluate", trained_run, "--data", data, "--out", base / "evaluation",
                            "--cache-dir", cache, "-q"])
    return Battery(data, paths, train, base / "run", predict, base / "predict.csv", evaluate,
                   base / "evaluation", before, tree_digest(data))


def test_battery_has_at_least_25_kinds():
    assert len(FILE_KINDS) + len(FOLDER_KINDS) + len(RUN_KINDS) >= 25


def test_commands_succeed_despite_bad_files(battery):
    for name, (code, _, stderr) in (("train", battery.train), ("predict", battery.predict),
                                    ("evaluate", battery.evaluate)):
        assert code == 0, f"{name} failed:\n{stderr}"
        assert "Traceback" not in stderr


def test_no_input_file_changed(battery):
    assert battery.digest_after == battery.digest_before


@pytest.mark.parametrize("kind", FILE_KINDS, ids=lambda k: k.name)
def test_train_uses_or_skips_and_lists(battery, kind):
    path = str(battery.paths[kind.name])
    used = {row["source"] for row in read_csv(battery.run / "split.csv")}
    skipped = {row["path"]: row["reason"] for row in read_csv(battery.run / "skipped.csv")}
    if kind.discovery_reason is None:
        assert path in used and path not in skipped
    else:
        assert path not in used
        assert path in skipped, f"{path!r} not in skipped.csv"
        assert re_search(kind.discovery_reason, skipped[path])
        log = (battery.run / "train.log").read_text(encoding="utf-8")
        assert f"skipped {printable(path)}: " in log


@pytest.mark.parametrize("kind", FILE_KINDS, ids=lambda k: k.name)
def test_predict_row_says_why(battery, kind):
    path = str(battery.paths[kind.name])
    rows = {row["path"]: row for row in read_csv(battery.predict_csv)}
    shown = path.encode("utf-8", "backslashreplace").decode("utf-8")  # how predict writes names
    assert shown in rows, f"{shown!r} has no row"
    status = rows[shown]["status"]
    if kind.reason is None:
        assert status == "ok"
        assert 0 <= float(rows[shown]["prob_malignant"]) <= 1
    else:
        assert status.startswith("skipped: ") and re_search(kind.reason, status)


@pytest.mark.parametrize("kind", FILE_KINDS, ids=lambda k: k.name)
def test_evaluate_counts_and_logs(battery, kind):
    path = str(battery.paths[kind.name])
    predicted = {row["path"] for row in read_csv(battery.evaluate_dir / "predictions.csv")}
    stderr = battery.evaluate[2]
    if kind.discovery_reason is None:
        assert path in predicted
    else:
        assert path not in predicted
        assert f"skipped {printable(path)}: " in stderr


def test_evaluate_counts_decoding_failures(battery):
    metrics = json.loads((battery.evaluate_dir / "metrics.json").read_text())
    decode_failures = [k for k in FILE_KINDS if k.reason and k.name not in (
        ".DS_Store", "Thumbs.db", "AppleDouble ._ file", "symbolic link loop (folder)")]
    assert metrics["num_skipped"] == len(decode_failures)


def test_names_are_escaped_in_logs(battery):
    log = (battery.run / "train.log").read_text(encoding="utf-8")
    assert "\u202e" not in log and "x\\nERROR all is well\\u202e.png" in log
    for line in log.splitlines():  # every line is a log record, none forged by a file name
        assert line[:4].isdigit(), line


def re_search(pattern: str, text: str) -> bool:
    return re.search(pattern, text) is not None


# ---- folders and manifests refused before training ----------------------------------------

def good_tree(root: Path) -> Path:
    return make_idc_tree(root, num_patients=4, per_class=2)


def folder_empty(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def folder_only_junk(tmp: Path) -> Path:
    root = tmp / "junk"
    root.mkdir()
    (root / ".DS_Store").write_bytes(b"Bud1")
    (root / "Thumbs.db").write_bytes(b"\xd0\xcf")
    (root / "notes.txt").write_text("nothing here")
    return root


def folder_unlabelled(tmp: Path) -> Path:
    rng = np.random.default_rng(0)
    for i in range(4):
        write_png(tmp / "scans" / "slide" / f"{i}.png", patch(i % 2, rng))
    return tmp / "scans"


def folder_one_class(tmp: Path) -> Path:
    rng = np.random.default_rng(0)
    for p in range(4):
        for i in range(3):
            write_png(tmp / "one" / "malignant" / f"p{p}" / f"{i}.png", patch(1, rng))
    return tmp / "one"


def folder_all_corrupt(tmp: Path) -> Path:
    for p in range(4):
        for label in (0, 1):
            path = tmp / "broken" / f"p{p}" / str(label) / "x.png"
            path.parent.mkdir(parents=True)
            path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    return tmp / "broken"


def folder_one_patient(tmp: Path) -> Path:
    return make_idc_tree(tmp / "single", num_patients=1, per_class=4)


def manifest(text: str | bytes, name: str = "manifest.csv") -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        root = good_tree(tmp / "m")
        path = root / name
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return root if name == "manifest.csv" else path
    return make


def npz(**arrays) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / "data.npz"
        np.savez(path, **arrays)
        return path
    return make


def missing(tmp: Path) -> Path:
    return tmp / "no_such_folder"


def wrong_file_type(tmp: Path) -> Path:
    (tmp / "data.txt").write_text("path,label\n")
    return tmp / "data.txt"


def corrupt_npz(tmp: Path) -> Path:
    (tmp / "data.npz").write_bytes(b"PK\x03\x04" + bytes(50))
    return tmp / "data.npz"


FIRST = "10000/0/10000_idx5_x1_y1_class0.png"
FOLDER_KINDS = [
    ("empty folder", folder_empty, "found no images"),
    ("folder of junk only (.DS_Store, Thumbs.db, .txt)", folder_only_junk, "found no images"),
    ("images without class folders", folder_unlabelled, "could not tell their labels"),
    ("one class only", folder_one_class, "holds only malignant images"),
    ("every image corrupt", folder_all_corrupt, "none of the images.*could be decoded"),
    ("one patient only", folder_one_patient, "part is empty.*too few patients"),
    ("--data that does not exist", missing, "no such file or folder"),
    ("--data a file of another type", wrong_file_type, "neither a manifest .csv nor a .npz"),
    ("manifest label neither 0/1 nor benign/malignant", manifest(f"path,label\n{FIRST},2\n"),
     "label '2' is not one of 0, 1, benign, malignant"),
    ("manifest label as free text", manifest(f"path,label\n{FIRST},suspicious\n"), "label 'suspicious'"),
    ("manifest without a label column", manifest(f"path,class\n{FIRST},0\n"), "no label column"),
    ("manifest that is not UTF-8", manifest(f"path,label\n{FIRST},0\n".encode("utf-16")), "not UTF-8"),
    ("manifest with an empty path", manifest("path,label\n,0\n"), "the path is empty"),
    ("manifest with an unknown split", manifest(f"path,label,split\n{FIRST},0,holdout\n"),
     "split 'holdout' is not one of"),
    ("manifest whose every path points outside its folder",
     manifest("path,label\n../../etc/passwd,0\n/etc/hostname,1\n"), "found no images"),
    ("npz with a pickled object array", npz(train_images=np.array([{"a": 1}], dtype=object),
                                            train_labels=np.array([0])), "not a readable .npz"),
    ("npz with labels other than 0/1", npz(train_images=np.zeros((3, 28, 28), np.uint8),
                                           train_labels=np.array([0, 1, 7])), "not only 0 and 1"),
    ("npz images of the wrong shape", npz(train_images=np.zeros((3, 5), np.uint8),
                                          train_labels=np.array([0, 1, 0])), "has shape \\(3, 5\\)"),
    ("npz that is a damaged zip", corrupt_npz, "not a readable .npz"),
]


@pytest.mark.parametrize("name, make, match", FOLDER_KINDS, ids=[k[0] for k in FOLDER_KINDS])
def test_train_refuses_folder(tmp_path, name, make, match):
    data = make(tmp_path)
    before = tree_digest(tmp_path)
    refused(["train", "--data", data, "--out", tmp_path / "out" / "run", "--cache-dir", tmp_path / "out" / "cache",
             *TINY_TRAIN], match)
    after = tree_digest(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith(b"out")} == before


EVALUATE_REFUSES = [k for k in FOLDER_KINDS if k[0] not in ("one class only", "one patient only")]


@pytest.mark.parametrize("name, make, match", EVALUATE_REFUSES, ids=[k[0] for k in EVALUATE_REFUSES])
def test_evaluate_refuses_folder(tmp_path, trained_run, name, make, match):
    data = make(tmp_path)
    refused(["evaluate", trained_run, "--data", data, "--out", tmp_path / "ev", "-q",
             "--cache-dir", tmp_path / "cache"], match)


def test_manifest_rows_skipped_and_listed(tmp_path):
    """Rows that point outside the folder, at nothing, twice at one image, or at an unusable
    path are skipped and listed; the other rows train."""
    root = make_idc_tree(tmp_path / "data", num_patients=6, per_class=4)
    (tmp_path / "secret.png").write_bytes(encode(RGB, ".png"))
    os.symlink(tmp_path / "secret.png", root / "link_out.png")
    images = sorted(root.rglob("*_class*.png"))
    rows = [f"{p.relative_to(root)},{p.name[-5]}" for p in images]
    rows += ["../secret.png,0", f"{tmp_path / 'secret.png'},1", "link_out.png,0", "gone/missing.png,1",
             f"{images[0].relative_to(root)},0", f"{'x' * 5000}.png,0", "=cmd|' /C calc'!A0.png,1"]
    (root / "manifest.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    before = tree_digest(tmp_path)
    code, _, stderr = run_cli(["train", "--data", root, "--out", tmp_path / "run",
                               "--cache-dir", tmp_path / "cache", *TINY_TRAIN])
    assert code == 0, stderr
    skipped = read_csv(tmp_path / "run" / "skipped.csv")
    reasons = [row["reason"] for row in skipped]
    assert sum("points outside the manifest's folder" in r for r in reasons) == 3
    assert sum("listed in the manifest but missing" in r for r in reasons) == 2
    assert sum("the same image as line 2" in r for r in reasons) == 1
    assert sum("not a usable path" in r for r in reasons) == 1
    assert len(read_csv(tmp_path / "run" / "split.csv")) == len(images)
    assert tree_digest(tmp_path).items() >= before.items()


# ---- run folders refused by evaluate and predict ------------------------------------------

def run_copy(trained_run: Path, tmp: Path) -> Path:
    target = tmp / "run"
    shutil.copytree(trained_run, target, ignore=shutil.ignore_patterns("evaluation", "report", "*.log"))
    return target


def not_a_run(run: Path) -> None:
    for child in run.iterdir():
        if child.is_file():
            child.unlink()


def edit_json(name: str, change: Callable[[dict], object]) -> Callable[[Path], None]:
    def make(run: Path) -> None:
        path = run / name
        value = json.loads(path.read_text())
        result = change(value)
        path.write_text(json.dumps(value if result is None else result))
    return make


def write_file(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda run: (run / name).write_bytes(data)


def keras_model(kind: str) -> Callable[[Path], None]:
    def make(run: Path) -> None:
        import keras
        inputs = keras.Input((50, 50, 3))
        x = inputs
        if kind == "lambda":
            x = keras.layers.Lambda(lambda t: t * 2.0, name="payload")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        outputs = keras.layers.Dense(2, activation="softmax")(x)
        if kind == "shape":
            inputs = keras.Input((32, 32, 3))
            outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs))
        keras.Model(inputs, outputs).save(run / "model.keras")
    return make


def foreign_module(run: Path) -> None:
    """A model archive whose configuration names `os.system`, the classic payload."""
    import zipfile
    source = run / "model.keras"
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    config["config"]["layers"][1]["module"] = "os"
    config["config"]["layers"][1]["class_name"] = "system"
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(source, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def future_keras(run: Path) -> None:
    import zipfile
    source = run / "model.keras"
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["metadata.json"] = json.dumps({"keras_version": "99.0.0"}).encode()
    with zipfile.ZipFile(source, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def damage_split(run: Path) -> None:
    text = (run / "split.csv").read_text().splitlines()
    text[1] = text[1].replace(",0,", ",benign?,").replace(",1,", ",malignant?,")
    (run / "split.csv").write_text("\n".join(text) + "\n")


RUN_KINDS = [
    ("run folder that does not exist", lambda run: shutil.rmtree(run), "does not exist"),
    ("folder that is not a run", not_a_run, "is not a histoclass run \\(no config.json\\)"),
    ("config.json from a newer histoclass", edit_json("config.json", lambda c: c.update(format=99)),
     "newer than this histoclass"),
    ("config.json that is not JSON", write_file("config.json", b"{\"format\": 1, "), "not readable JSON"),
    ("config.json of something else", write_file("config.json", b"[1, 2, 3]"), "not a histoclass run configuration"),
    ("config.json with impossible settings", edit_json("config.json", lambda c: c["train"].update(image_size="big")),
     "settings this histoclass cannot use"),
    ("model.keras that is random bytes", write_file("model.keras", os.urandom(4096)), "not a Keras model file"),
    ("model.keras with a Lambda layer (code)", keras_model("lambda"), "refused to load .*Lambda"),
    ("model.keras naming os.system", foreign_module, "refused to load .*module 'os'"),
    ("model.keras missing", lambda run: (run / "model.keras").unlink(), "does not exist; train a model first"),
    ("model.keras for another input size", keras_model("shape"), "not a histoclass model for this run"),
    ("model.keras from a future Keras", future_keras, "saved with Keras 99"),
    ("calibration.json damaged", write_file("calibration.json", b"{\"temperature\": \"hot\"}"), "calibration.json is damaged"),
]


@pytest.mark.parametrize("name, damage, match", RUN_KINDS, ids=[k[0] for k in RUN_KINDS])
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_damaged_run_is_refused(tmp_path, trained_run, command, name, damage, match):
    run = run_copy(trained_run, tmp_path)
    damage(run)
    before = tree_digest(tmp_path)
    if command == "predict":
        args = ["predict", run, next(Path(trained_run).parent.joinpath("data").rglob("*.png")), "-q"]
    else:
        args = ["evaluate", run, "-q", "--cache-dir", tmp_path / "cache"]
    refused(args, match)
    assert tree_digest(tmp_path) == before  # nothing written, nothing changed


def test_damaged_split_is_refused(tmp_path, trained_run):
    run = run_copy(trained_run, tmp_path)
    damage_split(run)
    refused(["evaluate", run, "-q", "--cache-dir", tmp_path / "cache"], "split.csv is damaged")


def test_resume_refuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "x").mkdir()
    refused(["train", "--resume", tmp_path / "x", "--quiet"], "is not a histoclass run")


def test_train_refuses_an_existing_file_or_full_folder_as_out(tmp_path, trained_run):
    (tmp_path / "file").write_text("keep me")
    refused(["train", "--data", tmp_path, "--out", tmp_path / "file", *TINY_TRAIN], "is a file")
    assert (tmp_path / "file").read_text() == "keep me"
    refused(["train", "--data", tmp_path, "--out", trained_run, *TINY_TRAIN], "is not empty.*--resume")


def test_predict_missing_input_and_folder_as_output(tmp_path, trained_run):
    refused(["predict", trained_run, tmp_path / "nothing.png", "-q"], "no such file or folder")
    image = write_png(tmp_path / "a.png", RGB)
    (tmp_path / "out").mkdir()
    refused(["predict", trained_run, image, "-o", tmp_path / "out", "-q"], "is a folder")


def test_predict_defuses_formula_names(tmp_path, trained_run, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_png(tmp_path / "=1+1.png", RGB)
    write_png(tmp_path / "@SUM(A1).png", RGB)
    code, _, stderr = run_cli(["predict", trained_run, "=1+1.png", "@SUM(A1).png", "-o", "out.csv", "-q"])
    assert code == 0, stderr
    paths = [row["path"] for row in read_csv(tmp_path / "out.csv")]
    assert paths == ["'=1+1.png", "'@SUM(A1).png"]


def test_error_messages_are_one_line(tmp_path):
    weird = tmp_path / "evil\nerror: forged line"
    line = refused(["train", "--data", weird, "--out", tmp_path / "run", *TINY_TRAIN], "no such file or folder")
    assert "evil\\nerror: forged line" in line


@pytest.mark.skipif(IS_ROOT, reason="root reads any folder; chmod cannot make one unreadable")
def test_unreadable_folder_is_listed(tmp_path):
    root = make_idc_tree(tmp_path / "data", num_patients=6, per_class=3)
    locked = root / "locked" / "0"
    write_png(locked / "a.png", RGB)
    locked.chmod(0)
    try:
        code, _, stderr = run_cli(["train", "--data", root, "--out", tmp_path / "run",
                                   "--cache-dir", tmp_path / "cache", *TINY_TRAIN])
    finally:
        locked.chmod(0o755)
    assert code == 0, stderr
    reasons = {row["path"]: row["reason"] for row in read_csv(tmp_path / "run" / "skipped.csv")}
    assert "folder cannot be read" in reasons[str(locked)]


def test_nothing_unpickles():
    """Every np.load in the package refuses pickles; nothing imports pickle, joblib or dill."""
    source = Path(__file__).resolve().parents[1] / "src" / "histoclass"
    for path in source.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for banned in ("import pickle", "import joblib", "import dill", "torch.load", "allow_pickle=True",
                       "safe_mode=False", "enable_unsafe_deserialization"):
            assert banned not in text, f"{path.name} uses {banned}"
        for index in [i for i in range(len(text)) if text.startswith("np.load(", i)]:
            call = text[index:text.index(")", index) + 1]
            assert "allow_pickle=False" in call, f"{path.name}: {call}"


def test_oversized_file_is_never_read(tmp_path, monkeypatch):
    from histoclass.data import decode
    path = tmp_path / "scan.tif"
    path.write_bytes(b"II*\x00" + bytes(2000))
    monkeypatch.setattr(decode, "MAX_FILE_BYTES", 1000)
    with pytest.raises(decode.BadImage, match=r"too large to be a patch \(2,004 bytes, limit 1,000\)"):
        decode.read_image_bytes(str(path))


def test_hidden_folders_are_not_searched(tmp_path):
    from histoclass.data import discover
    root = make_idc_tree(tmp_path / "data", num_patients=2, per_class=2)
    write_png(root / ".ipynb_checkpoints" / "1" / "copy.png", RGB)
    write_png(root / "10000" / ".git" / "0" / "object.png", RGB)
    dataset = discover(root)
    assert not [r for r in dataset.records if "/." in r.source]
    assert len(dataset.records) == 2 * 2 * 2
