"""Tests for rlfm.data.text: every input format, every user error, the train/val split."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from rlfm.data.text import Document, load_documents, split_documents
from rlfm.errors import ConfigError, DataError


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, columns: dict[str, list[object]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


# ---------------------------------------------------------------------------- formats


def test_plain_text_file_is_one_document(tmp_path: Path) -> None:
    """A text file of any extension is one document named after the file, CRLF and BOM removed."""
    f = tmp_path / "notes.md"
    f.write_bytes("\ufeffFirst line\r\nSecond line\r\n".encode())
    assert load_documents(f) == [Document(name="notes.md", text="First line\nSecond line\n")]


def test_jsonl_gives_one_document_per_line(tmp_path: Path) -> None:
    """JSONL rows become documents named file:line; blank lines are skipped but still counted."""
    f = tmp_path / "rows.jsonl"
    f.write_text('{"text": "alpha", "id": 1}\n\n{"text": "beta"}\n', encoding="utf-8")
    docs = load_documents(f)
    assert docs == [Document("rows.jsonl:1", "alpha"), Document("rows.jsonl:3", "beta")]


def test_json_list_and_single_object(tmp_path: Path) -> None:
    """A .json holding a list of objects gives one document per item; a single object gives one."""
    many = tmp_path / "many.json"
    many.write_text(json.dumps([{"text": "a"}, {"text": "b"}], indent=2), encoding="utf-8")
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"text": "only"}, indent=2), encoding="utf-8")
    assert [d.text for d in load_documents(many)] == ["a", "b"]
    assert [d.name for d in load_documents(many)] == ["many.json:1", "many.json:2"]
    assert load_documents(one) == [Document("one.json:1", "only")]


def test_json_file_with_json_lines(tmp_path: Path) -> None:
    """A .json file written as JSON lines is read as JSON lines."""
    f = write_jsonl(tmp_path / "rows.json", [{"text": "x"}, {"text": "y"}])
    assert [d.text for d in load_documents(f)] == ["x", "y"]


def test_custom_text_field(tmp_path: Path) -> None:
    """text_field selects the column that holds the text."""
    f = write_jsonl(tmp_path / "rows.jsonl", [{"body": "hello", "text": 3}])
    assert [d.text for d in load_documents(f, text_field="body")] == ["hello"]


def test_parquet_gives_one_document_per_row(tmp_path: Path) -> None:
    """Parquet rows become documents named file:row from the text column."""
    f = write_parquet(tmp_path / "t.parquet", {"text": ["one", "two"], "n": [1, 2]})
    assert load_documents(f) == [Document("t.parquet:1", "one"), Document("t.parquet:2", "two")]


def test_saved_dataset_directory(tmp_path: Path) -> None:
    """A directory written by Dataset.save_to_disk is read as rows of its text column."""
    import datasets

    datasets.Dataset.from_dict({"text": ["r1", "r2"]}).save_to_disk(str(tmp_path / "ds"))
    docs = load_documents(tmp_path / "ds")
    assert [d.text for d in docs] == ["r1", "r2"]
    assert docs[0].name == "ds:1"


def test_saved_dataset_dict_uses_train_or_only_split(tmp_path: Path) -> None:
    """A saved DatasetDict gives its 'train' split, or its only split when there is one."""
    import datasets

    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["t"]}),
            "test": datasets.Dataset.from_dict({"text": ["x"]}),
        }
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    single = datasets.DatasetDict({"valid": datasets.Dataset.from_dict({"text": ["v"]})})
    single.save_to_disk(str(tmp_path / "single"))
    assert [d.text for d in load_documents(tmp_path / "dd")] == ["t"]
    assert [d.text for d in load_documents(tmp_path / "single")] == ["v"]


def test_directory_reads_files_recursively_in_order(tmp_path: Path) -> None:
    """A directory gives its files sorted and recursively; hidden and empty files are skipped,
    row files give rows."""
    (tmp_path / "b.txt").write_text("bee", encoding="utf-8")
    (tmp_path / "a.txt").write_text("ay", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    (tmp_path / ".hidden.txt").write_text("secret", encoding="utf-8")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("x", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("sea", encoding="utf-8")
    write_jsonl(tmp_path / "sub" / "rows.jsonl", [{"text": "r1"}, {"text": "r2"}])
    docs = load_documents(tmp_path)
    assert [d.name for d in docs] == [
        "a.txt",
        "b.txt",
        "sub/c.txt",
        "sub/rows.jsonl:1",
        "sub/rows.jsonl:2",
    ]
    assert [d.text for d in docs] == ["ay", "bee", "sea", "r1", "r2"]


def test_inputs_are_not_modified(tmp_path: Path) -> None:
    """Loading leaves every input file byte-for-byte unchanged."""
    (tmp_path / "a.txt").write_bytes(b"line\r\n")
    write_jsonl(tmp_path / "r.jsonl", [{"text": "x"}])

    def digest() -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}

    before = digest()
    load_documents(tmp_path)
    assert digest() == before


# ---------------------------------------------------------------------------- errors


def test_missing_path(tmp_path: Path) -> None:
    """A path that does not exist is reported by name."""
    with pytest.raises(DataError, match=r"nope\.txt: no such file or directory"):
        load_documents(tmp_path / "nope.txt")


@pytest.mark.parametrize("content", [b"", b"  \n\t\n"])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    """A 0-byte or whitespace-only file is an error naming the file."""
    f = tmp_path / "e.txt"
    f.write_bytes(content)
    with pytest.raises(DataError, match=r"e\.txt: file is empty"):
        load_documents(f)


def test_binary_file_reports_nul_offset(tmp_path: Path) -> None:
    """A file with a NUL byte is rejected as binary, with the byte offset."""
    f = tmp_path / "b.bin"
    f.write_bytes(b"abc\ndef\x00ghi")
    with pytest.raises(DataError, match=r"b\.bin: binary file \(NUL byte at byte offset 7, line 2"):
        load_documents(f)


def test_invalid_utf8_reports_offset(tmp_path: Path) -> None:
    """A file that is not UTF-8 is rejected with the offending byte and its offset."""
    f = tmp_path / "latin.txt"
    f.write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(
        DataError, match=r"latin\.txt: not valid UTF-8 \(byte 0xe9 at byte offset 3"
    ):
        load_documents(f)


def test_binary_file_inside_directory(tmp_path: Path) -> None:
    """A binary file inside a directory is named in the error, not silently skipped."""
    (tmp_path / "ok.txt").write_text("fine", encoding="utf-8")
    (tmp_path / "img.png").write_bytes(b"\x89PNG\r\n\x00\x00")
    with pytest.raises(DataError, match=r"img\.png: binary file"):
        load_documents(tmp_path)


def test_directory_without_usable_files(tmp_path: Path) -> None:
    """A directory with only hidden or empty files is an error naming the directory."""
    d = tmp_path / "data"
    d.mkdir()
    (d / ".hidden").write_text("x", encoding="utf-8")
    (d / "blank.txt").write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"data: directory has no usable files"):
        load_documents(d)


def test_jsonl_invalid_json_names_line(tmp_path: Path) -> None:
    """A JSONL line that is not JSON is reported with its 1-based line number."""
    f = tmp_path / "r.jsonl"
    f.write_text('{"text": "ok"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"r\.jsonl: line 2: not valid JSON"):
        load_documents(f)


def test_jsonl_row_not_an_object(tmp_path: Path) -> None:
    """A JSONL line holding a non-object is reported with its line and JSON type."""
    f = write_jsonl(tmp_path / "r.jsonl", [{"text": "ok"}, ["text"]])
    with pytest.raises(DataError, match=r"r\.jsonl: line 2: is a JSON array, expected an object"):
        load_documents(f)


def test_jsonl_missing_field_lists_fields(tmp_path: Path) -> None:
    """A row without the text field is reported with the fields it does have."""
    f = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "a", "response": "b"}])
    with pytest.raises(
        DataError, match=r"r\.jsonl: line 1: has no 'text' field \(fields: 'prompt', 'response'\)"
    ):
        load_documents(f)


@pytest.mark.parametrize(
    ("value", "problem"), [(5, "is int, expected a string"), (None, "is null"), ("  ", "is empty")]
)
def test_jsonl_bad_text_value(tmp_path: Path, value: object, problem: str) -> None:
    """A text field that is not a string, or is empty, is reported with its line."""
    f = write_jsonl(tmp_path / "r.jsonl", [{"text": "fine"}, {"text": "ok"}, {"text": value}])
    with pytest.raises(DataError, match=rf"r\.jsonl: line 3: field 'text' {problem}"):
        load_documents(f)


def test_json_list_item_error_names_item(tmp_path: Path) -> None:
    """An error in a .json list names the 1-based item."""
    f = tmp_path / "l.json"
    f.write_text(json.dumps([{"text": "a"}, {"txt": "b"}]), encoding="utf-8")
    with pytest.raises(DataError, match=r"l\.json: item 2: has no 'text' field \(fields: 'txt'\)"):
        load_documents(f)


def test_parquet_missing_column(tmp_path: Path) -> None:
    """A Parquet file without the text column is reported with the columns it has."""
    f = write_parquet(tmp_path / "t.parquet", {"body": ["x"]})
    with pytest.raises(DataError, match=r"t\.parquet: has no column 'text' \(columns: body\)"):
        load_documents(f)


def test_parquet_null_row(tmp_path: Path) -> None:
    """A null in the Parquet text column is reported with its 1-based row."""
    f = write_parquet(tmp_path / "t.parquet", {"text": ["x", None]})
    with pytest.raises(DataError, match=r"t\.parquet: row 2: field 'text' is null"):
        load_documents(f)


def test_saved_dataset_missing_column(tmp_path: Path) -> None:
    """A saved dataset without the text column is reported with its columns."""
    import datasets

    datasets.Dataset.from_dict({"prompt": ["p"]}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError, match=r"ds: has no column 'text' \(columns: prompt\)"):
        load_documents(tmp_path / "ds")


def test_saved_dataset_dict_without_train_split(tmp_path: Path) -> None:
    """A saved DatasetDict with several splits and no 'train' one is reported with its splits."""
    import datasets

    dd = datasets.DatasetDict(
        {
            "a": datasets.Dataset.from_dict({"text": ["1"]}),
            "b": datasets.Dataset.from_dict({"text": ["2"]}),
        }
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"dd: a DatasetDict with splits a, b and no 'train'"):
        load_documents(tmp_path / "dd")


# ---------------------------------------------------------------------------- split


def docs_n(n: int) -> list[Document]:
    return [Document(name=f"d{i}", text=f"text {i}") for i in range(n)]


def test_split_is_a_deterministic_partition() -> None:
    """Splitting by document is a partition, repeatable for a seed, and keeps input order."""
    docs = docs_n(20)
    train, val = split_documents(docs, 0.25, seed=3)
    assert (train, val) == split_documents(docs, 0.25, seed=3)
    assert len(val) == 5 and len(train) == 15
    assert sorted(d.name for d in train + val) == sorted(d.name for d in docs)
    assert [d.name for d in val] == sorted((d.name for d in val), key=lambda s: int(s[1:]))
    assert split_documents(docs, 0.25, seed=4)[1] != val  # the seed matters


@pytest.mark.parametrize(("n", "fraction"), [(2, 0.01), (2, 0.99), (3, 0.5)])
def test_split_sides_are_never_empty(n: int, fraction: float) -> None:
    """With two or more documents both sides get at least one document."""
    train, val = split_documents(docs_n(n), fraction, seed=0)
    assert train and val and len(train) + len(val) == n


def test_single_document_is_cut_at_a_line_boundary() -> None:
    """One document is cut at the line boundary nearest (1 - val_fraction) of its length."""
    text = "".join(f"line {i:02d}\n" for i in range(10))  # 10 lines of 8 characters
    (train,), (val,) = split_documents([Document("one", text)], 0.2, seed=0)
    assert train.text == "".join(f"line {i:02d}\n" for i in range(8))
    assert val.text == "line 08\nline 09\n"
    assert (train.name, val.name) == ("one[train]", "one[val]")


def test_single_line_document_is_cut_at_a_space_or_anywhere() -> None:
    """A one-line document is cut at a space, or inside a word when it has none."""
    (train,), (val,) = split_documents([Document("s", "aaaa bbbb cccc dddd")], 0.25, seed=0)
    assert (train.text, val.text) == ("aaaa bbbb cccc ", "dddd")
    (train,), (val,) = split_documents([Document("w", "abcdefghij")], 0.5, seed=0)
    assert (train.text, val.text) == ("abcde", "fghij")


def test_single_document_split_keeps_both_sides_non_empty() -> None:
    """Even a tiny fraction or a text with blank edges leaves non-space text on both sides."""
    (train,), (val,) = split_documents([Document("x", "\n\nab\n\n")], 0.001, seed=0)
    assert train.text.strip() and val.text.strip()
    assert train.text + val.text == "\n\nab\n\n"


def test_single_document_too_short_to_split() -> None:
    """A lone document with under two non-space characters cannot be split."""
    with pytest.raises(DataError, match=r"tiny: the only document is too short"):
        split_documents([Document("tiny", " a ")], 0.5, seed=0)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_bad_val_fraction(fraction: float) -> None:
    """val_fraction outside (0, 1) is a ConfigError naming val_fraction."""
    with pytest.raises(ConfigError, match=r"val_fraction="):
        split_documents(docs_n(3), fraction, seed=0)
