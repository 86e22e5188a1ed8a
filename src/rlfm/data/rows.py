"""Reading rows from data files: one reader for the text, SFT, preference and prompt data.

What counts as rows, and how each row is named in error messages (numbers count from 1):

- **``.jsonl``**: one JSON value per non-blank line, ``"<file>: line N"``.
- **``.json``**: a list (``"<file>: item N"``), a single value (``"<file>: line 1"``), or, when
  the whole text is not one JSON value, JSON lines as for ``.jsonl``.
- **``.parquet``**: one row per table row, ``"<file>: row N"``.
- **a saved `datasets` directory** (what ``Dataset(Dict).save_to_disk`` writes): the rows of a
  ``Dataset``, or of the ``"train"`` split (or the only split) of a ``DatasetDict``, named
  ``"<dir>: row N"`` and ``"<dir> [train]: row N"``; a ``"validation"`` (else ``"test"``) split
  of a ``DatasetDict`` is read as validation rows.

Text is decoded as UTF-8 (a leading byte-order mark dropped, line endings normalised to
``\\n``); every problem raises :class:`rlfm.errors.DataError` naming the file, and the line when
there is one. What a row must hold is for the caller to check: rows come back as decoded.
Files are only ever read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from rlfm.errors import DataError

if TYPE_CHECKING:
    import datasets

ROW_SUFFIXES = (".jsonl", ".json", ".parquet")
"""File endings read as rows."""


class Row(NamedTuple):
    """One decoded row and where it came from."""

    where: str
    """``"<file>: line 3"``, ``"<file>: item 3"``, ``"<file>: row 3"``, ``"<dir> [train]: row 3"``."""
    value: Any
    """The row as decoded: a dict for a well-formed row, anything JSON can hold otherwise."""
    number: int
    """Its 1-based line, item or row number (the number in ``where``)."""


# ---------------------------------------------------------------------------- text


_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32 (little-endian)"),
    (b"\x00\x00\xfe\xff", "UTF-32 (big-endian)"),
    (b"\xff\xfe", "UTF-16 (little-endian)"),
    (b"\xfe\xff", "UTF-16 (big-endian)"),
)


def _wide_encoding(data: bytes) -> str | None:
    """The name of a UTF-16/32 encoding ``data`` is in (by its byte-order mark, or by the NUL
    bytes every other or every fourth byte of ASCII text carries), or None."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            return name
    head = data[:4096]
    if len(head) >= 8 and len(head) % 2 == 0:
        even, odd = head[0::2], head[1::2]
        if odd.count(0) > 0.9 * len(odd) and even.count(0) < 0.1 * len(even):
            return "UTF-16 (little-endian)"
        if even.count(0) > 0.9 * len(even) and odd.count(0) < 0.1 * len(odd):
            return "UTF-16 (big-endian)"
    return None


def read_text(file: Path) -> str:
    """The file's text as UTF-8 with ``\\n`` line endings; DataError naming the encoding of
    UTF-16/32 text, and for binary content."""
    data = file.read_bytes()
    wide = _wide_encoding(data)
    if wide is not None:
        raise DataError(
            f"{file}: the text is {wide}, expected UTF-8; re-encode the file, e.g. "
            f"`iconv -f {wide.split()[0]} -t UTF-8 {file.name}`"
        )
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise DataError(
            f"{file}: binary file (NUL byte at byte offset {nul}, line {line}); expected UTF-8 text"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{file}: not valid UTF-8 (byte 0x{data[e.start]:02x} at byte offset "
            f"{e.start}, line {line}); expected UTF-8 text: re-encode the file, "
            "e.g. `iconv -f latin1 -t utf-8`"
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n")


def json_lines(file: Path, text: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line of a JSON-lines text; DataError
    names the file, the line and the column of invalid JSON."""
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{file}: line {n}: not valid JSON ({e.msg} at column {e.colno}); "
                "expected one JSON object per line"
            ) from None


def json_rows(file: Path, text: str) -> list[Row]:
    """Rows of the text of a ``.jsonl`` or ``.json`` file (by ``file``'s ending, see the module
    docstring); [] for a blank text or an empty JSON list."""
    if file.suffix.lower() == ".json":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError as e:
            if text.lstrip().startswith("["):  # meant as a list, not JSON lines
                raise DataError(
                    f"{file}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                    "expected a list of objects or JSON lines"
                ) from None
        else:
            if isinstance(whole, list):
                return [Row(f"{file}: item {n}", v, n) for n, v in enumerate(whole, start=1)]
            return [Row(f"{file}: line 1", whole, 1)]
    return [Row(f"{file}: line {n}", v, n) for n, v in json_lines(file, text)]


def json_kind(value: Any) -> str:
    """JSON's name for the type of a decoded value ("object", "array", "null", ...); the Python
    type's name for a value JSON cannot hold."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__  # a Parquet value JSON has no name for (bytes, datetime, ...)


# ---------------------------------------------------------------------------- files


def file_rows(file: Path) -> list[Row]:
    """Rows of one ``.jsonl``, ``.json`` or ``.parquet`` file ([] when it holds none);
    DataError for another ending, text that is not UTF-8, invalid JSON or a damaged Parquet
    file."""
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # a dependency of `datasets`; imported only when needed

        try:
            values = pq.read_table(file).to_pylist()
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise DataError(f"{file}: not a readable Parquet file ({e})") from None
        return [Row(f"{file}: row {n}", v, n) for n, v in enumerate(values, start=1)]
    if suffix in (".jsonl", ".json"):
        return json_rows(file, read_text(file))
    raise DataError(
        f"{file}: unknown file type {suffix or '(no ending)'!r}; expected .jsonl, .json or "
        ".parquet rows"
    )


def row_files(directory: Path) -> list[Path]:
    """The ``.jsonl``, ``.json`` and ``.parquet`` files below ``directory``, recursively, in
    sorted order; hidden files and anything in hidden folders are left out. DataError for a
    saved `datasets` folder inside (its metadata files are not rows: pass that folder itself)."""
    files = sorted(
        p
        for p in directory.rglob("*")
        if p.is_file()
        and p.suffix.lower() in ROW_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    )
    for folder in sorted({p.parent for p in files}):
        if folder != directory and is_saved_dataset(folder):
            raise DataError(
                f"{directory}: holds a saved `datasets` directory, {folder}; pass that directory "
                "itself, or keep only .jsonl, .json and .parquet files here"
            )
    return files


# ---------------------------------------------------------------------------- saved datasets


def is_saved_dataset(directory: Path) -> bool:
    """True when ``directory`` is what ``Dataset(Dict).save_to_disk`` writes."""
    if (directory / "dataset_dict.json").is_file():
        return True
    return (directory / "dataset_info.json").is_file() and (directory / "state.json").is_file()


def saved_dataset_splits(
    directory: Path,
) -> tuple[tuple[str, datasets.Dataset], tuple[str, datasets.Dataset] | None]:
    """``((label, train rows), (label, validation rows) or None)`` of a saved `datasets`
    directory; a label (``"<dir>"``, or ``"<dir> [<split>]"`` for a split of a DatasetDict)
    names the rows in messages. The training rows are a ``Dataset``'s, or the ``"train"`` split
    (else the only split) of a ``DatasetDict``, whose ``"validation"`` (else ``"test"``) split
    gives the validation rows. DataError when the directory cannot be loaded, or for a
    DatasetDict with several splits and none named ``"train"``."""
    import datasets  # heavy: imported only for saved datasets

    try:
        loaded = datasets.load_from_disk(str(directory))
    except Exception as e:  # damaged, or from an incompatible `datasets` version
        raise DataError(
            f"{directory}: cannot be loaded with datasets.load_from_disk ({e}); "
            "expected a directory written by Dataset.save_to_disk"
        ) from None
    if not isinstance(loaded, datasets.DatasetDict):
        return (str(directory), loaded), None
    splits = list(loaded)
    if "train" in loaded:
        train = "train"
    elif len(splits) == 1:
        train = splits[0]
    else:
        raise DataError(
            f"{directory}: a DatasetDict with splits {', '.join(splits) or '(none)'} and no "
            "'train' split; expected a 'train' split or a single split"
        )
    val = next((s for s in ("validation", "test") if s in loaded and s != train), None)
    return (
        (f"{directory} [{train}]", loaded[train]),
        (f"{directory} [{val}]", loaded[val]) if val is not None else None,
    )


def saved_dataset_rows(directory: Path) -> tuple[list[Row], list[Row]]:
    """(training rows, validation rows or []) of a saved `datasets` directory, chosen as
    :func:`saved_dataset_splits` chooses them and named ``"<label>: row N"``."""
    (label, train), val = saved_dataset_splits(directory)
    train_rows = [Row(f"{label}: row {n}", v, n) for n, v in enumerate(train, start=1)]
    if val is None:
        return train_rows, []
    val_label, val_split = val
    return train_rows, [Row(f"{val_label}: row {n}", v, n) for n, v in enumerate(val_split, 1)]
