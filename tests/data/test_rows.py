"""Reading rows from .jsonl, .json and .parquet files and saved `datasets` directories."""

import json
from pathlib import Path

import pytest

from rlfm.data.rows import (
    Row,
    file_rows,
    is_saved_dataset,
    row_files,
    saved_dataset_rows,
)
from rlfm.errors import DataError


def test_jsonl_rows_are_named_by_line_and_a_bad_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\r\n', encoding="utf-8")
    assert file_rows(path) == [
        Row(f"{path}: line 1", {"a": 1}, 1),
        Row(f"{path}: line 3", {"a": 2}, 3),
    ]
    path.write_text('{"a": 1}\n{"a": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"r\.jsonl: line 2: not valid JSON"):
        file_rows(path)


def test_json_list_single_object_and_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "l.json"
    path.write_text(json.dumps([{"a": 1}, {"a": 2}], indent=2), encoding="utf-8")
    assert file_rows(path) == [
        Row(f"{path}: item 1", {"a": 1}, 1),
        Row(f"{path}: item 2", {"a": 2}, 2),
    ]
    path.write_text(json.dumps({"a": 1}, indent=2), encoding="utf-8")
    assert file_rows(path) == [Row(f"{path}: line 1", {"a": 1}, 1)]
    path.write_text('{"a": 1}\n{"a": 2}\n', encoding="utf-8")
    assert [r.where for r in file_rows(path)] == [f"{path}: line 1", f"{path}: line 2"]
    path.write_text('[{"a": 1},\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"l\.json: not valid JSON \(.* at line 2, column 1\)"):
        file_rows(path)


def test_parquet_rows_are_named_by_row(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", None]}), path)
    assert file_rows(path) == [
        Row(f"{path}: row 1", {"a": 1, "b": "x"}, 1),
        Row(f"{path}: row 2", {"a": 2, "b": None}, 2),
    ]
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: not a readable Parquet file"):
        file_rows(tmp_path / "bad.parquet")


def test_unknown_ending_and_non_utf8_text(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"x\.csv: unknown file type '\.csv'"):
        file_rows(tmp_path / "x.csv")
    (tmp_path / "latin.jsonl").write_bytes(b'{"a": 1}\n{"a": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin\.jsonl: not valid UTF-8 .*line 2"):
        file_rows(tmp_path / "latin.jsonl")


def test_row_files_are_sorted_recursive_and_skip_hidden(tmp_path: Path) -> None:
    for name in ("b.jsonl", "a/c.parquet", "a.json", ".hidden.jsonl", ".git/x.json", "n.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}\n")
    found = [p.relative_to(tmp_path).as_posix() for p in row_files(tmp_path)]
    assert found == ["a/c.parquet", "a.json", "b.jsonl"]


def test_saved_dataset_with_train_and_validation(tmp_path: Path) -> None:
    import datasets

    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([{"a": 1}, {"a": 2}]),
            "validation": datasets.Dataset.from_list([{"a": 3}]),
        }
    ).save_to_disk(tmp_path / "dd")
    assert is_saved_dataset(tmp_path / "dd") and not is_saved_dataset(tmp_path)
    train, val = saved_dataset_rows(tmp_path / "dd")
    assert train == [
        Row(f"{tmp_path / 'dd'} [train]: row 1", {"a": 1}, 1),
        Row(f"{tmp_path / 'dd'} [train]: row 2", {"a": 2}, 2),
    ]
    assert val == [Row(f"{tmp_path / 'dd'} [validation]: row 1", {"a": 3}, 1)]

    datasets.Dataset.from_list([{"a": 1}]).save_to_disk(tmp_path / "ds")
    assert saved_dataset_rows(tmp_path / "ds") == (
        [Row(f"{tmp_path / 'ds'}: row 1", {"a": 1}, 1)],
        [],
    )


def test_dataset_dict_without_train_split(tmp_path: Path) -> None:
    import datasets

    one = datasets.Dataset.from_list([{"a": 1}])
    datasets.DatasetDict({"only": one}).save_to_disk(tmp_path / "single")
    train, val = saved_dataset_rows(tmp_path / "single")
    assert [r.where for r in train] == [f"{tmp_path / 'single'} [only]: row 1"] and val == []
    datasets.DatasetDict({"a": one, "b": one}).save_to_disk(tmp_path / "dd")
    with pytest.raises(DataError, match=r"dd: a DatasetDict with splits a, b and no 'train'"):
        saved_dataset_rows(tmp_path / "dd")


def test_a_saved_dataset_inside_a_row_folder_is_named(tmp_path: Path) -> None:
    """Its metadata files (dataset_info.json, state.json) are not rows: the folder is named."""
    import datasets

    (tmp_path / "a.jsonl").write_text('{"a": 1}\n', encoding="utf-8")
    datasets.Dataset.from_list([{"a": 2}]).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DataError, match=r"holds a saved `datasets` directory, .*saved"):
        row_files(tmp_path)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_utf16_and_utf32_text_is_named(tmp_path, encoding):
    """UTF-16/32 text (with or without a byte-order mark) is named as such, not reported as a
    binary file with NUL bytes."""
    from rlfm.data.rows import read_text

    f = tmp_path / "rows.jsonl"
    f.write_bytes('{"prompt": "hello there"}\n'.encode(encoding))
    with pytest.raises(DataError, match=r"rows\.jsonl: the text is UTF-(16|32).*expected UTF-8"):
        read_text(f)
