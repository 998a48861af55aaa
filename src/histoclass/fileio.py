"""Atomic writes: a reader, or a run killed at any moment, sees the old file or the new one,
never half of one."""
from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from .errors import HistoclassError


# Errors that mean "no room": the disk, the user's quota, or the largest file allowed.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path beside `path`; on success it replaces `path` in one step.

    The temporary file lives in the same folder so that `os.replace` is a rename on one file
    system. `suffix` lets writers that insist on an extension (Keras wants `.keras`) use it.
    Any failure, a full disk included, removes the temporary file and leaves `path` as it was;
    a failure of the file system becomes a HistoclassError that says what to do.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
        # mkstemp makes the file owner-only; outputs get the usual mode (0666 less the umask).
        os.fchmod(fd, 0o666 & ~_UMASK)
        os.close(fd)
    except OSError as err:
        raise _write_error(path, err) from err
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        cause = _os_error_in(err)
        if cause is not None:
            raise _write_error(path, cause) from err
        raise


def _os_error_in(err: BaseException) -> OSError | None:
    """The OSError behind `err`, also where a library wrapped it in its own exception."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, OSError) and err.errno is not None:
            return err
        err = err.__cause__ or err.__context__
        seen += 1
    return None


def _write_error(path: Path, err: OSError) -> HistoclassError:
    if err.errno in NO_SPACE:
        return HistoclassError(
            f"the disk is full while writing {path} ({err.strerror}); nothing was overwritten and "
            "no partial file was left. Free some space and run the command again (an interrupted "
            "training run continues with `histoclass train --resume RUN_DIR`)")
    if isinstance(err, IsADirectoryError):
        return HistoclassError(f"cannot write {path}: it is a folder; give a file name")
    return HistoclassError(f"cannot write {path} ({err.strerror or err}); choose a folder you can write to")


def reserve_space(path: str | os.PathLike) -> None:
    """Allocates every block of a sparse file (a fresh memory map), so that a full disk is an
    OSError now, not a SIGBUS that kills the process when a page is written later."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
        except OSError as err:
            if err.errno in NO_SPACE:
                raise
            # A file system without fallocate: go on, as before.


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """UTF-8; a file name that is not valid UTF-8 (held as surrogates) is written back as the
    bytes it was, so that reading with errors="surrogateescape" gives the same path."""
    write_bytes_atomic(path, text.encode("utf-8", "surrogateescape"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def csv_safe(value: Any) -> Any:
    """Defuses text that a spreadsheet would run as a formula (CSV injection)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]], defuse_formulas: bool = False) -> str:
    """A CSV as text. `defuse_formulas` is for files people open in a spreadsheet; files the
    project reads back (split.csv) keep their text exact."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([csv_safe(value) for value in row] if defuse_formulas else row)
    return buffer.getvalue()


def write_csv_atomic(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]],
                     defuse_formulas: bool = False) -> None:
    """Writes `csv_text` in one step."""
    write_text_atomic(path, csv_text(header, rows, defuse_formulas))


# Characters that would break a log line or a table apart, or reorder what is shown (bidi).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: Any) -> str:
    """Text from data (file names, labels) made safe to show on one line: control and bidi
    characters become escapes, bytes that are not UTF-8 become \\xNN; other letters stay."""
    text = str(text)
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # surrogates that did not come from undecodable bytes
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return _UNPRINTABLE.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


def escape_log_args(record) -> bool:
    """A logging filter: the text arguments of a log line (file names, labels, reasons) are
    shown through `printable`, so a file named with a newline cannot forge log lines."""
    if isinstance(record.args, tuple):
        record.args = tuple(printable(a) if isinstance(a, (str, os.PathLike)) else a for a in record.args)
    return True


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
