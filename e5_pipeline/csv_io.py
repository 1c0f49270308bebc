"""The one CSV convention that the prepare scripts write and the training scripts read.

Files are UTF-8 without a byte-order mark, every field is quoted, rows end with "\\n", and no
field is ever empty. Readers turn off pandas' missing-value detection and read every column as a
string, so texts such as "NA", "null", "nan", "None" or "N/A" and numbers with leading zeros come
back exactly as written. A field that is empty all the same reads back as an empty string.
"""

import csv
import os
from collections.abc import Iterable, Sequence
from typing import TextIO

from datasets import DatasetDict, Features, Value, load_dataset

# Keyword arguments for `datasets.load_dataset("csv", ...)`, which passes them to `pandas.read_csv`.
CSV_READ_KWARGS = {"keep_default_na": False, "na_filter": False}


def open_csv_writer(path: str | os.PathLike, header: Sequence[str]) -> tuple[TextIO, "csv._writer"]:
    """Open `path` for writing in the shared convention, write `header`, and return the file and its writer."""
    handle = open(path, "w", encoding="utf-8", newline="")
    writer = csv.writer(handle, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(header)
    return handle, writer


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[str]]) -> int:
    """Write `rows` under `header` in the shared convention and return the number of rows written."""
    handle, writer = open_csv_writer(path, header)
    count = 0
    with handle:
        for row in rows:
            writer.writerow(row)
            count += 1
    return count


def load_csv_dataset(
    data_files: dict[str, str],
    columns: Sequence[str],
    cache_dir: str | None = None,
    column_flags: dict[str, str] | None = None,
) -> DatasetDict:
    """Load CSV splits with `datasets` so that every value of `columns` is the exact string written.

    `column_flags` maps a column to the command-line flag that names it (e.g. "query" ->
    "--query_column"), so that the error for a missing column names the flag to change.

    Raises:
        ValueError: a file lacks one of `columns`; the message lists the columns found.
    """
    headers = {}
    for split, path in data_files.items():
        with open(path, encoding="utf-8-sig", newline="") as handle:
            headers[split] = next(csv.reader(handle), [])
        missing = [name for name in columns if name not in headers[split]]
        if missing:
            flags = [column_flags[name] for name in missing if column_flags and name in column_flags]
            if flags:
                fix = f"Pass the right column name with {' and '.join(flags)}"
            else:
                fix = "Name the right column with the script's column flag"
            raise ValueError(
                f"{path} ({split} file) has no column {', '.join(map(repr, missing))}; its header has "
                f"{', '.join(map(repr, headers[split])) or 'no columns'}. {fix}, or prepare the file with "
                "the prepare_*_data.py scripts."
            )
    # Typing every column as a string stops pandas from reading "007" as the number 7.
    all_columns = dict.fromkeys(name for header in headers.values() for name in header)
    features = Features({name: Value("string") for name in all_columns})
    return load_dataset("csv", data_files=data_files, features=features, cache_dir=cache_dir, **CSV_READ_KWARGS)
