"""Reading the user's ``--data``: plain text, JSON lines, Parquet and saved `datasets` directories.

Every input becomes a list of :class:`Document` (a name and its text). What is accepted:

- **a plain text file** (any extension not listed below): one document, the whole file, UTF-8.
  Windows line endings are normalised to ``\\n`` and a leading byte-order mark is dropped.
- **``.jsonl``** (one JSON object per line; blank lines are skipped) and **``.json``** (JSON lines,
  a list of objects, or a single object): one document per object, taken from its ``text_field``
  (default ``"text"``), named ``"<file>:<line>"`` (``"<file>:<item>"`` for a JSON list).
- **``.parquet``**: one document per row from the ``text_field`` column, named ``"<file>:<row>"``.
- **a directory**: if it is a saved `datasets` directory (``dataset_info.json`` + ``state.json``,
  or ``dataset_dict.json``: what ``Dataset.save_to_disk`` writes), its rows, from the ``"train"``
  split of a ``DatasetDict`` (or its only split); otherwise every regular file below it, walked
  recursively in sorted order (hidden files and folders, empty files and linked folders are
  skipped; a binary file is an error), each file read by the rules above (so ``.jsonl``,
  ``.json`` and ``.parquet`` files and saved `datasets` folders inside give rows, other files
  give one document each).

Names are relative to the path given (``path.name`` for a single file), rows and lines are
counted from 1, and every problem raises :class:`rlfm.errors.DataError` naming the file (and
the row or line) before any long work starts. Input files are only ever read. The reading is
:mod:`rlfm.data.rows`' (shared with the SFT, preference and prompt data), except that of Parquet
files and saved datasets: only their ``text_field`` column is read.

:func:`split_documents` makes the train/validation split: by document, or, for a single
document, by cutting its text at a line boundary.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlfm.data.rows import is_saved_dataset, json_kind, json_rows, read_text, saved_dataset_splits
from rlfm.errors import ConfigError, DataError


@dataclass(frozen=True)
class Document:
    """One unit of text: a file, a row of a data file, a play."""

    name: str
    """Where it came from: a file name, ``"<file>:<row>"``, or a play name."""
    text: str
    """The text, with ``\\n`` line endings."""


def load_documents(path: str | Path, text_field: str = "text") -> list[Document]:
    """Read a text file, a JSONL/JSON/Parquet file or a directory into documents.

    Raises DataError naming the file (and 1-based row or line) when anything is unusable.
    """
    root = Path(path)
    if not root.exists():
        raise DataError(
            f"{root}: no such file or directory; expected a text, .jsonl, .json or "
            ".parquet file, or a directory of them"
        )
    if root.is_dir():
        docs = list(_load_dir(root, root, text_field))
        if not docs:
            raise DataError(
                f"{root}: directory has no usable files (every file is hidden or "
                "empty); expected text, .jsonl, .json or .parquet files, or a saved "
                "`datasets` directory"
            )
        return docs
    if not root.is_file():
        raise DataError(f"{root}: not a regular file or directory")
    return _load_file(root, root.name, text_field)


def split_documents(
    docs: Sequence[Document], val_fraction: float, seed: int
) -> tuple[list[Document], list[Document]]:
    """Split documents into (train, val), deterministically for a given seed.

    Several documents: ``round(len(docs) * val_fraction)`` of them (at least 1, at most all but
    one) are drawn with ``random.Random(seed)`` for validation; both lists keep the input order.
    One document: its text is cut at the line boundary nearest to ``(1 - val_fraction)`` of its
    length (at a space, or anywhere, when it has no usable line boundary), so both sides are
    non-empty; the parts are named ``"<name>[train]"`` and ``"<name>[val]"``.
    """
    if not isinstance(val_fraction, (int, float)) or not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction!r}: must be strictly between 0 and 1")
    if not docs:
        raise DataError("no documents to split into train and validation")
    if len(docs) == 1:
        return _split_text(docs[0], val_fraction)
    n = len(docs)
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    val_idx = set(random.Random(seed).sample(range(n), n_val))
    train = [d for i, d in enumerate(docs) if i not in val_idx]
    val = [d for i, d in enumerate(docs) if i in val_idx]
    return train, val


# ---------------------------------------------------------------------------- files and folders


def _load_dir(directory: Path, root: Path, text_field: str) -> Iterator[Document]:
    """Documents of every usable file below `directory`, sorted, named relative to `root`."""
    if is_saved_dataset(directory):
        yield from _load_saved_dataset(directory, _rel(directory, root), text_field)
        return
    for child in sorted(directory.iterdir()):
        if child.name.startswith("."):
            continue  # hidden: .git, .DS_Store, editor swap files
        if child.is_dir():
            if not child.is_symlink():  # a linked folder could loop back on itself
                yield from _load_dir(child, root, text_field)
        elif child.is_file():
            yield from _load_file(child, _rel(child, root), text_field, skip_empty=True)


def _rel(p: Path, root: Path) -> str:
    """`p` relative to `root` (posix form), or root's own name for the root itself."""
    return p.relative_to(root).as_posix() if p != root else root.name


def _load_file(file: Path, name: str, text_field: str, skip_empty: bool = False) -> list[Document]:
    """Documents of one file, read by its ending; an empty file gives [] when `skip_empty`."""
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        if skip_empty and file.stat().st_size == 0:
            return []
        return _load_parquet(file, name, text_field)
    text = read_text(file)
    if not text.strip():
        if skip_empty:
            return []
        raise DataError(f"{file}: file is empty (0 bytes or only whitespace); expected text")
    if suffix in (".jsonl", ".json"):
        rows = json_rows(file, text)
        if not rows:  # a non-blank text gives no rows only as an empty JSON list
            raise DataError(
                f"{file}: the JSON list is empty; expected objects with a {text_field!r} field"
            )
        return [_row_document(r.where, f"{name}:{r.number}", r.value, text_field) for r in rows]
    return [Document(name=name, text=text)]


# ---------------------------------------------------------------------------- rows


def _row_document(where: str, name: str, row: Any, text_field: str) -> Document:
    """The document `name` of one JSON row; `where` names the row in messages."""
    if not isinstance(row, dict):
        raise DataError(
            f"{where}: is a JSON {json_kind(row)}, expected an object "
            f'like {{"{text_field}": "..."}}'
        )
    if text_field not in row:
        fields = ", ".join(repr(k) for k in row) or "none"
        raise DataError(
            f"{where}: has no {text_field!r} field (fields: {fields}); "
            f"expected a string field {text_field!r}"
        )
    return Document(name=name, text=_check_text(where, row[text_field], text_field))


def _check_text(where: str, value: Any, text_field: str) -> str:
    """`value` if it is a non-empty string, else DataError naming the row."""
    if not isinstance(value, str):
        kind = "null" if value is None else type(value).__name__
        raise DataError(f"{where}: field {text_field!r} is {kind}, expected a string")
    if not value.strip():
        raise DataError(f"{where}: field {text_field!r} is empty, expected text")
    return value


def _load_parquet(file: Path, name: str, text_field: str) -> list[Document]:
    """One document per row of a Parquet file's `text_field` column (only that column is read)."""
    import pyarrow.parquet as pq  # a dependency of `datasets`; imported only when needed

    try:
        schema = pq.read_schema(file)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(
            f"{file}: not a readable Parquet file ({e}); expected a Parquet file "
            f"with a string column {text_field!r}"
        ) from None
    if text_field not in schema.names:
        raise DataError(
            f"{file}: has no column {text_field!r} (columns: "
            f"{', '.join(schema.names) or 'none'}); expected a string column "
            f"{text_field!r}"
        )
    values = pq.read_table(file, columns=[text_field]).column(text_field).to_pylist()
    if not values:
        raise DataError(f"{file}: has no rows; expected rows with a {text_field!r} column")
    return [
        Document(name=f"{name}:{n}", text=_check_text(f"{file}: row {n}", v, text_field))
        for n, v in enumerate(values, start=1)
    ]


def _load_saved_dataset(directory: Path, name: str, text_field: str) -> list[Document]:
    """One document per row of a saved `datasets` directory's `text_field` column (the
    training split that rows.saved_dataset_splits chooses; only that column is read)."""
    (label, split), _ = saved_dataset_splits(directory)
    if text_field not in split.column_names:
        raise DataError(
            f"{label}: has no column {text_field!r} (columns: "
            f"{', '.join(split.column_names) or 'none'}); expected a string column "
            f"{text_field!r}"
        )
    values = list(split[text_field])
    if not values:
        raise DataError(f"{label}: has no rows; expected rows with a {text_field!r} column")
    return [
        Document(name=f"{name}:{n}", text=_check_text(f"{label}: row {n}", v, text_field))
        for n, v in enumerate(values, start=1)
    ]


# ---------------------------------------------------------------------------- splitting one text


def _split_text(doc: Document, val_fraction: float) -> tuple[list[Document], list[Document]]:
    """Cut one document near ``(1 - val_fraction)`` of its length into two non-empty parts."""
    text = doc.text
    stripped = text.strip()
    if len(stripped) < 2:
        raise DataError(
            f"{doc.name}: the only document is too short to split into train and "
            "validation (it needs at least two non-space characters)"
        )
    # A cut p leaves non-space text on both sides iff first < p <= last.
    first = len(text) - len(text.lstrip())
    last = len(text.rstrip()) - 1
    target = min(max(round(len(text) * (1.0 - val_fraction)), first + 1), last)
    cut = _nearest_cut(text, target, first, last, "\n") or _nearest_cut(
        text, target, first, last, " "
    )
    if cut is None:
        cut = target  # one long word: cut inside it
    train = Document(name=f"{doc.name}[train]", text=text[:cut])
    val = Document(name=f"{doc.name}[val]", text=text[cut:])
    return [train], [val]


def _nearest_cut(text: str, target: int, first: int, last: int, sep: str) -> int | None:
    """The position just after the `sep` nearest to `target` with first < position <= last."""
    before = text.rfind(sep, first, target)  # cut = before + 1 <= target
    after = text.find(sep, target, last)  # cut = after + 1 <= last
    cuts = [i + 1 for i in (before, after) if i >= 0 and first < i + 1 <= last]
    return min(cuts, key=lambda p: (abs(p - target), p)) if cuts else None
