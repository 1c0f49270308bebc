"""Retrieval evaluation data keyed by text, for sentence-transformers' InformationRetrievalEvaluator.

Query/passage pairs repeat texts: one query can have several positives and one passage can be the
positive of several queries. Keying queries and corpus entries by their text gives each distinct
passage one corpus entry and each distinct query the set of all its positives, so a perfect
ranking scores 1.0 on every metric.
"""

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .beir import load_corpus
from .csv_io import load_csv_dataset

logger = logging.getLogger(__name__)

DISTRACTOR_FILE_SUFFIXES = (".jsonl", ".csv", ".txt")


@dataclass
class RetrievalEvaluationData:
    """Queries, corpus and relevance judgements in the form InformationRetrievalEvaluator takes."""

    queries: dict[str, str]  # query id -> query text
    corpus: dict[str, str]  # corpus id -> passage text
    relevant_docs: dict[str, set[str]]  # query id -> ids of its relevant passages
    num_distractors: int  # corpus entries that are no query's positive


def build_retrieval_evaluation_data(
    queries: Sequence[str], positives: Sequence[str], distractors: Iterable[str] = ()
) -> RetrievalEvaluationData:
    """Key the pairs `(queries[i], positives[i])` and the `distractors` by text.

    Ids are assigned in order of first appearance ("q0", "q1", ... and "d0", "d1", ...). A
    distractor with the same text as a positive is that positive's corpus entry, not a second one.
    """
    if len(queries) != len(positives):
        raise ValueError(f"expected one positive per query, got {len(queries)} queries and {len(positives)} positives.")
    query_ids: dict[str, str] = {}
    corpus_ids: dict[str, str] = {}
    relevant_docs: dict[str, set[str]] = {}
    for query, positive in zip(queries, positives):
        query_id = query_ids.setdefault(query, f"q{len(query_ids)}")
        corpus_id = corpus_ids.setdefault(positive, f"d{len(corpus_ids)}")
        relevant_docs.setdefault(query_id, set()).add(corpus_id)
    num_positives = len(corpus_ids)
    for passage in distractors:
        corpus_ids.setdefault(passage, f"d{len(corpus_ids)}")
    return RetrievalEvaluationData(
        queries={query_id: text for text, query_id in query_ids.items()},
        corpus={corpus_id: text for text, corpus_id in corpus_ids.items()},
        relevant_docs=relevant_docs,
        num_distractors=len(corpus_ids) - num_positives,
    )


def load_distractor_passages(
    path: str | os.PathLike, csv_column: str = "text", column_flag: str | None = None
) -> list[str]:
    """Read the passages of a BEIR `corpus.jsonl`, a CSV file (column `csv_column`) or a text file.

    A text file (`.txt`) contains one passage per line. Empty passages are left out with a WARNING
    that counts them.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: the file type is not one of DISTRACTOR_FILE_SUFFIXES, or the CSV lacks `csv_column`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"evaluation corpus file {str(path)!r} not found.")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        texts = list(load_corpus(path).values())
    elif suffix == ".csv":
        column_flags = {csv_column: column_flag} if column_flag else None
        texts = load_csv_dataset({"corpus": str(path)}, [csv_column], column_flags=column_flags)["corpus"][csv_column]
    elif suffix == ".txt":
        with open(path, encoding="utf-8-sig") as handle:
            texts = [line.strip() for line in handle]
    else:
        raise ValueError(
            f"evaluation corpus file {str(path)!r} has the suffix {suffix!r}; expected one of "
            f"{', '.join(DISTRACTOR_FILE_SUFFIXES)} (a BEIR corpus, a CSV file or one passage per line)."
        )
    passages = [text for text in texts if text.strip()]
    if len(passages) < len(texts):
        logger.warning("%s: left out %d of %d passages because they are empty.", path, len(texts) - len(passages), len(texts))
    return passages
