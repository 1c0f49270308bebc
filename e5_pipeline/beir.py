"""Readers for the BEIR folder layout: `corpus.jsonl`, `queries.jsonl` and `qrels/<split>.tsv`."""

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield `(line_number, object)` for each non-blank line of a JSON Lines file.

    Raises:
        ValueError: a line is not a JSON object; the message names the file and the line.
    """
    with open(path, encoding="utf-8-sig") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {line_number}: invalid JSON ({error.msg}, column {error.colno}).") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}, line {line_number}: expected a JSON object, found {type(record).__name__}.")
            yield line_number, record


def passage_text(document: dict) -> str:
    """Join a BEIR document's title and text with one space, leaving out an empty title."""
    title = str(document.get("title") or "").strip()
    text = str(document.get("text") or "").strip()
    return f"{title} {text}" if title else text


def load_corpus(path: str | os.PathLike) -> dict[str, str]:
    """Map each document id of a BEIR `corpus.jsonl` to its passage text (title, a space, text)."""
    return _load_texts(path, passage_text)


def load_queries(path: str | os.PathLike) -> dict[str, str]:
    """Map each query id of a BEIR `queries.jsonl` to its text."""
    return _load_texts(path, lambda record: str(record.get("text") or "").strip())


def _load_texts(path: str | os.PathLike, to_text) -> dict[str, str]:
    texts: dict[str, str] = {}
    for line_number, record in iter_jsonl(path):
        if "_id" not in record:
            raise ValueError(f"{path}, line {line_number}: missing the '_id' field; found {sorted(record)!r}.")
        identifier = str(record["_id"])
        if identifier in texts:
            raise ValueError(f"{path}, line {line_number}: duplicate _id {identifier!r}.")
        texts[identifier] = to_text(record)
    return texts


def iter_qrels(path: str | os.PathLike) -> Iterator[tuple[int, str, str, int]]:
    """Yield `(line_number, query_id, document_id, score)` for each judgement line of a BEIR qrels TSV.

    The file has the columns `query-id`, `corpus-id` and `score`, with or without that header row.
    Blank lines are skipped.
    """
    with open(path, encoding="utf-8-sig", newline="") as handle:
        for line_number, fields in enumerate(csv.reader(handle, delimiter="\t"), start=1):
            if not fields or fields == [""]:
                continue
            if line_number == 1 and fields[:2] == ["query-id", "corpus-id"]:
                continue
            if len(fields) != 3:
                raise ValueError(
                    f"{path}, line {line_number}: expected 3 tab-separated fields (query-id, corpus-id, score), "
                    f"found {len(fields)}: {fields!r}."
                )
            query_id, document_id, score = fields
            try:
                score_value = int(score)
            except ValueError:
                raise ValueError(f"{path}, line {line_number}: score {score!r} is not an integer.") from None
            yield line_number, query_id, document_id, score_value


def load_qrels(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Map each query id of a BEIR qrels TSV to `{document id: relevance score}`.

    The file has the columns `query-id`, `corpus-id` and `score`, with or without that header row.
    """
    qrels: dict[str, dict[str, int]] = {}
    for _, query_id, document_id, score in iter_qrels(path):
        qrels.setdefault(query_id, {})[document_id] = score
    return qrels


def beir_paths(beir_dir: str | os.PathLike, qrels_split: str) -> dict[str, Path]:
    """Return the paths of a BEIR folder's corpus, queries and qrels split, failing if one is missing."""
    beir_dir = Path(beir_dir)
    paths = {
        "corpus": beir_dir / "corpus.jsonl",
        "queries": beir_dir / "queries.jsonl",
        "qrels": beir_dir / "qrels" / f"{qrels_split}.tsv",
    }
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: a BEIR folder contains corpus.jsonl, queries.jsonl and qrels/<split>.tsv."
            )
    return paths
