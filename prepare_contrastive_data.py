"""Turn query/passage pairs into the train and validation CSVs of the contrastive stage.

Examples:
    python prepare_contrastive_data.py --input_file pairs.tsv --output_dir data/pairs
    python prepare_contrastive_data.py --beir_dir data/cranfield --qrels_split train --output_dir data/pairs

Each writes `train.csv` and `validation.csv` (columns `query` and `positive`, every field quoted)
and `prepare_stats.json` to `--output_dir`. The statistics give the rows read per file, written
per split and dropped per reason. They also count duplicate pairs, queries with several positives
and positives shared by several queries.

The split is by query by default: all rows of one query text land on the same side, so no
validation query was seen in training. `--split_by row` splits rows instead, as a plain random
split does, which leaks queries with several positives into both sides.
"""

import csv
import logging
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from e5_pipeline.beir import beir_paths, iter_qrels, load_corpus, load_queries
from e5_pipeline.cli import build_argument_parser
from e5_pipeline.csv_io import write_csv
from e5_pipeline.logging_utils import run_script, setup_logging, write_json
from e5_pipeline.splits import check_validation_split, choose_validation_mask, validation_size
from e5_pipeline.text_files import check_encoding, check_output_dir, is_blank, iter_text_blocks, split_lines

logger = logging.getLogger(__name__)

OUTPUT_NAMES = ("train.csv", "validation.csv", "prepare_stats.json")

# Reasons a row is dropped, as they appear under "rows_dropped" in prepare_stats.json.
DELIMITED_DROP_REASONS = ("blank_line", "empty_query", "empty_positive", "duplicate_pair")
BEIR_DROP_REASONS = (
    "score_below_min_score",
    "unknown_query_id",
    "unknown_document_id",
    "empty_query",
    "empty_positive",
    "duplicate_pair",
)


@dataclass
class InputArguments:
    input_file: str | None = field(
        default=None,
        metadata={"help": "Delimited file of pairs, one pair per row. Give this or --beir_dir, not both."},
    )
    delimiter: str = field(
        default="\t",
        metadata={
            "help": "Field delimiter of --input_file, one character; 'tab' or '\\t' also mean a tab. Default: tab."
        },
    )
    header: bool = field(
        default=True,
        metadata={
            "help": "Whether the first row of --input_file is a header row. Default: yes; --no_header reads the first "
            "row as a pair."
        },
    )
    input_query_column: str | None = field(
        default=None,
        metadata={"help": "Header name of the query column; overrides --input_query_col_idx. Needs --header."},
    )
    input_positive_column: str | None = field(
        default=None,
        metadata={"help": "Header name of the positive column; overrides --input_positive_col_idx. Needs --header."},
    )
    input_query_col_idx: int = field(default=0, metadata={"help": "0-based index of the query column."})
    input_positive_col_idx: int = field(default=1, metadata={"help": "0-based index of the positive passage column."})
    quoting: Literal["none", "csv"] | None = field(
        default=None,
        metadata={
            "help": "'none': one physical line is one row and quotes are plain text; 'csv': standard CSV quoting, "
            "where a quoted field may hold delimiters and line breaks. Default: 'none' for a tab delimiter, "
            "'csv' otherwise."
        },
    )
    encoding: str = field(
        default="utf-8",
        metadata={"help": "Text encoding of --input_file (a Python codec name). A UTF-8 byte-order mark is removed."},
    )
    beir_dir: str | None = field(
        default=None,
        metadata={
            "help": "BEIR folder with corpus.jsonl, queries.jsonl and qrels/<split>.tsv; each judged (query, "
            "passage) with a score >= --min_score becomes one pair, the passage being title + ' ' + text."
        },
    )
    qrels_split: str = field(
        default="train", metadata={"help": "Qrels file of --beir_dir to read: qrels/<split>.tsv. Only with --beir_dir."}
    )
    min_score: int = field(
        default=1,
        metadata={"help": "Lowest relevance score of a judgement that makes a pair. Only with --beir_dir."},
    )


@dataclass
class OutputArguments:
    output_dir: str = field(
        metadata={"help": "Directory for train.csv, validation.csv and prepare_stats.json; created if missing."}
    )
    query_column_out: str = field(default="query", metadata={"help": "Name of the query column in the output CSVs."})
    positive_column_out: str = field(
        default="positive", metadata={"help": "Name of the positive passage column in the output CSVs."}
    )
    validation_split: float = field(
        default=0.01,
        metadata={
            "help": "Fraction of the queries (or rows, with --split_by row) written to validation.csv, in [0, 1): "
            "exactly floor(count * fraction), chosen at random with --seed. 0 writes no validation file."
        },
    )
    split_by: Literal["query", "row"] = field(
        default="query",
        metadata={
            "help": "'query' (default) keeps all rows of one query text on the same side; 'row' splits rows "
            "independently, so a query with several positives can appear on both sides."
        },
    )
    seed: int = field(default=42, metadata={"help": "Seed of the random choice of validation queries or rows."})


@dataclass
class Pair:
    query: str
    positive: str
    source: str  # file and line, for messages


@dataclass
class PairsRead:
    """Pairs read from one input, with the rows read per file and the rows dropped per reason."""

    pairs: list[Pair]
    rows_read: dict[str, int]
    rows_dropped: Counter = field(default_factory=Counter)
    first_dropped: dict[str, str] = field(default_factory=dict)

    def drop(self, reason: str, source: str) -> None:
        self.rows_dropped[reason] += 1
        self.first_dropped.setdefault(reason, source)


def parse_delimiter(value: str) -> str:
    delimiter = "\t" if value in ("tab", "\\t") else value
    if len(delimiter) != 1 or delimiter in '\r\n"':
        raise ValueError(
            f"--delimiter {value!r} must be a single character other than a quote or a line break, e.g. ',' or 'tab'."
        )
    return delimiter


# Input flags that only one kind of input reads. A value other than the default given with the
# other kind of input is rejected, because it would be ignored.
DELIMITED_ONLY_FLAGS = (
    "delimiter",
    "header",
    "input_query_column",
    "input_positive_column",
    "input_query_col_idx",
    "input_positive_col_idx",
    "quoting",
    "encoding",
)
BEIR_ONLY_FLAGS = ("qrels_split", "min_score")


def check_arguments(inputs: InputArguments, outputs: OutputArguments) -> None:
    """Reject contradicting or invalid arguments before any reading."""
    if (inputs.input_file is None) == (inputs.beir_dir is None):
        raise ValueError("Give exactly one input: --input_file PAIRS.tsv or --beir_dir DIR.")
    if inputs.input_file is not None:
        ignored, source_flag = BEIR_ONLY_FLAGS, "--input_file"
    else:
        ignored, source_flag = DELIMITED_ONLY_FLAGS, "--beir_dir"
    defaults = InputArguments()
    changed = [
        "--no_header" if name == "header" and not inputs.header else f"--{name} {getattr(inputs, name)!r}"
        for name in ignored
        if getattr(inputs, name) != getattr(defaults, name)
    ]
    if changed:
        verb, pronoun = ("has", "it") if len(changed) == 1 else ("have", "them")
        raise ValueError(f"{', '.join(changed)} {verb} no effect with {source_flag}; remove {pronoun}.")
    check_validation_split(outputs.validation_split)
    if not outputs.query_column_out or not outputs.positive_column_out:
        raise ValueError("--query_column_out and --positive_column_out must be non-empty column names.")
    if outputs.query_column_out == outputs.positive_column_out:
        raise ValueError(
            f"--query_column_out and --positive_column_out are both {outputs.query_column_out!r}; use two names."
        )
    if inputs.input_file is not None:
        if not inputs.header and (inputs.input_query_column or inputs.input_positive_column):
            raise ValueError(
                "--input_query_column and --input_positive_column name header columns, but --no_header is set; "
                "use --input_query_col_idx and --input_positive_col_idx instead."
            )
        for flag in ("input_query_col_idx", "input_positive_col_idx"):
            if getattr(inputs, flag) < 0:
                raise ValueError(f"--{flag} {getattr(inputs, flag)!r} is negative; column indices start at 0.")
        if inputs.input_query_col_idx == inputs.input_positive_col_idx and not (
            inputs.input_query_column or inputs.input_positive_column
        ):
            raise ValueError(
                f"--input_query_col_idx and --input_positive_col_idx are both {inputs.input_query_col_idx}; the query "
                "and the positive must come from different columns."
            )


def iter_lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """Yield `(line_number, line)` for each physical line, without its "\\n" or "\\r\\n"."""
    for block, first_line_number in iter_text_blocks(path, encoding):
        yield from enumerate(split_lines(block), start=first_line_number)


def iter_csv_records(path: Path, encoding: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """Yield `(first_line_number, fields)` for each record of a CSV file with standard quoting.

    Raises:
        ValueError: a quote is not closed, or text follows a closing quote.
    """

    def physical_lines() -> Iterator[str]:
        # Splitting on "\n" only, and handing each line to the csv module with its line break,
        # keeps "\r\n" and Unicode line separators inside quoted fields as they are.
        for block, _ in iter_text_blocks(path, encoding):
            pieces = block.split("\n")
            for piece in pieces[:-1]:
                yield piece + "\n"
            if pieces[-1]:
                yield pieces[-1]

    reader = csv.reader(physical_lines(), delimiter=delimiter, strict=True)
    start = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            if "unexpected end of data" in str(error):
                raise ValueError(
                    f"{path}, line {start}: unclosed quote; the record starting on this line runs to the end of the "
                    "file. Close the quote, or pass --quoting none if quotes in this file are plain text."
                ) from None
            raise ValueError(
                f"{path}, line {reader.line_num}: invalid CSV quoting ({error}). Double the quotes inside a quoted "
                "field, or pass --quoting none if quotes in this file are plain text."
            ) from None
        yield start, fields
        start = reader.line_num + 1


def resolve_column(name: str | None, index: int, header: list[str] | None, flag: str, path: Path) -> int:
    """Return the index of a column given by header name (when `name` is set) or by index."""
    if name is not None:
        if name not in header:
            raise ValueError(
                f"{path}: column {name!r} (--{flag}) not found; the header has {', '.join(map(repr, header))}. "
                "Fix the name (check for stray spaces), or pass --no_header with column indices."
            )
        return header.index(name)
    return index


def read_delimited_pairs(inputs: InputArguments, encoding: str) -> PairsRead:
    """Read the pairs of --input_file, checking the field count of every row."""
    path = Path(inputs.input_file)
    if not path.is_file():
        raise FileNotFoundError(f"--input_file {inputs.input_file!r} not found.")
    if path.stat().st_size == 0:
        raise ValueError(f"--input_file {inputs.input_file!r} is empty; it needs one query/positive pair per row.")
    delimiter = parse_delimiter(inputs.delimiter)
    quoting = inputs.quoting or ("none" if delimiter == "\t" else "csv")
    logger.info("Reading %s with delimiter %r, quoting %r, header %s.", path, delimiter, quoting, inputs.header)
    if quoting == "none":
        records = ((number, line.split(delimiter)) for number, line in iter_lines(path, encoding))
    else:
        records = iter_csv_records(path, encoding, delimiter)

    result = PairsRead(
        pairs=[], rows_read={str(path): 0}, rows_dropped=Counter(dict.fromkeys(DELIMITED_DROP_REASONS, 0))
    )
    expected_fields = query_index = positive_index = None
    for line_number, fields in records:
        source = f"{path}, line {line_number}"
        if expected_fields is None:
            header = fields if inputs.header else None
            expected_fields = len(fields)
            query_index = resolve_column(
                inputs.input_query_column, inputs.input_query_col_idx, header, "input_query_column", path
            )
            positive_index = resolve_column(
                inputs.input_positive_column, inputs.input_positive_col_idx, header, "input_positive_column", path
            )
            if query_index == positive_index:
                raise ValueError(f"{path}: the query and the positive are both column {query_index}; use two columns.")
            for flag, index in (("input_query_col_idx", query_index), ("input_positive_col_idx", positive_index)):
                if index >= expected_fields:
                    raise ValueError(
                        f"--{flag} {index} is out of range: {source} has {expected_fields} field(s) {fields!r} "
                        f"when split on {delimiter!r}; column indices start at 0."
                    )
            if inputs.header:
                logger.info(
                    "Header of %s: %r; query column %d, positive column %d.", path, fields, query_index, positive_index
                )
                continue
        result.rows_read[str(path)] += 1
        if all(is_blank(value) for value in fields):
            result.drop("blank_line", source)
            continue
        if len(fields) != expected_fields:
            if len(fields) > expected_fields:
                fix = "Remove the extra delimiters"
                if quoting == "none":
                    fix += ", or pass --quoting csv if fields are quoted"
            else:
                fix = f"Add the missing delimiters (is a {delimiter!r} replaced by spaces?)"
                if quoting == "csv":
                    fix += ", or check the quoting"
            raise ValueError(
                f"{source}: expected {expected_fields} fields separated by {delimiter!r} (as on line 1), found "
                f"{len(fields)}: {fields!r}. {fix}."
            )
        query, positive = fields[query_index], fields[positive_index]
        if is_blank(query):
            result.drop("empty_query", source)
        elif is_blank(positive):
            result.drop("empty_positive", source)
        else:
            result.pairs.append(Pair(query, positive, source))
    if expected_fields is None:
        raise ValueError(f"--input_file {inputs.input_file!r} has no rows.")
    return result


def read_beir_pairs(inputs: InputArguments) -> PairsRead:
    """Turn each judgement of qrels/<split>.tsv with score >= --min_score into a (query, passage) pair."""
    paths = beir_paths(inputs.beir_dir, inputs.qrels_split)
    queries = load_queries(paths["queries"])
    # NOTE: the whole corpus is loaded into memory, so a corpus of millions of passages needs several GB.
    corpus = load_corpus(paths["corpus"])
    logger.info("Read %d queries and %d passages from %s.", len(queries), len(corpus), inputs.beir_dir)
    qrels_path = str(paths["qrels"])
    result = PairsRead(pairs=[], rows_read={qrels_path: 0}, rows_dropped=Counter(dict.fromkeys(BEIR_DROP_REASONS, 0)))
    for line_number, query_id, document_id, score in iter_qrels(qrels_path):
        source = f"{qrels_path}, line {line_number}"
        result.rows_read[qrels_path] += 1
        if score < inputs.min_score:
            result.drop("score_below_min_score", source)
        elif query_id not in queries:
            result.drop("unknown_query_id", source)
        elif document_id not in corpus:
            result.drop("unknown_document_id", source)
        elif is_blank(queries[query_id]):
            result.drop("empty_query", source)
        elif is_blank(corpus[document_id]):
            result.drop("empty_positive", source)
        else:
            result.pairs.append(Pair(queries[query_id], corpus[document_id], source))
    if result.rows_read[qrels_path] == 0:
        raise ValueError(f"{qrels_path} has no judgements; pick another --qrels_split.")
    return result


def drop_duplicate_pairs(read: PairsRead) -> list[Pair]:
    """Keep the first occurrence of each exact (query, positive) pair and count the others as dropped."""
    seen: set[tuple[str, str]] = set()
    unique = []
    for pair in read.pairs:
        key = (pair.query, pair.positive)
        if key in seen:
            read.drop("duplicate_pair", pair.source)
        else:
            seen.add(key)
            unique.append(pair)
    return unique


def count_overlaps(pairs: list[Pair]) -> dict[str, int]:
    """Count queries with several positives and positives shared by several queries (both thin in-batch negatives)."""
    positives_per_query = defaultdict(set)
    queries_per_positive = defaultdict(set)
    for pair in pairs:
        positives_per_query[pair.query].add(pair.positive)
        queries_per_positive[pair.positive].add(pair.query)
    return {
        "distinct_queries": len(positives_per_query),
        "distinct_positives": len(queries_per_positive),
        "queries_with_several_positives": sum(len(values) > 1 for values in positives_per_query.values()),
        "positives_shared_by_several_queries": sum(len(values) > 1 for values in queries_per_positive.values()),
    }


def choose_validation_rows(pairs: list[Pair], outputs: OutputArguments) -> np.ndarray:
    """Return a boolean array over `pairs`, True for rows that go to validation."""
    if outputs.split_by == "row":
        size = validation_size(len(pairs), outputs.validation_split, "rows")
        if size == 0:
            return np.zeros(len(pairs), dtype=bool)
        return np.unpackbits(choose_validation_mask(len(pairs), size, outputs.seed), count=len(pairs)).astype(bool)

    queries = list(dict.fromkeys(pair.query for pair in pairs))
    size = validation_size(len(queries), outputs.validation_split, "queries")
    if size == 0:
        return np.zeros(len(pairs), dtype=bool)
    chosen = np.unpackbits(choose_validation_mask(len(queries), size, outputs.seed), count=len(queries)).astype(bool)
    validation_queries = {query for query, is_chosen in zip(queries, chosen.tolist()) if is_chosen}
    logger.info(
        "Validation: %d of %d queries (floor(%d * %r)), seed %d.",
        size,
        len(queries),
        len(queries),
        outputs.validation_split,
        outputs.seed,
    )
    return np.array([pair.query in validation_queries for pair in pairs], dtype=bool)


def main(args: list[str] | None = None) -> dict:
    """Run the script on `args` (default: the command line) and return the statistics it wrote."""
    setup_logging()
    parser = build_argument_parser((InputArguments, OutputArguments))
    inputs, outputs = parser.parse_args_into_dataclasses(args=args)
    logger.info("Input arguments: %s", inputs)
    logger.info("Output arguments: %s", outputs)

    # 1. Check the arguments and the paths before reading.
    check_arguments(inputs, outputs)
    if inputs.input_file is not None:
        input_paths = [inputs.input_file]
    else:
        input_paths = [inputs.beir_dir, *beir_paths(inputs.beir_dir, inputs.qrels_split).values()]
    check_output_dir(outputs.output_dir, input_paths, OUTPUT_NAMES)

    # 2. Read the pairs and drop unusable rows and exact duplicates.
    if inputs.input_file is not None:
        read = read_delimited_pairs(inputs, check_encoding(inputs.encoding))
    else:
        read = read_beir_pairs(inputs)
    pairs = drop_duplicate_pairs(read)
    for reason, count in read.rows_dropped.items():
        if count:
            logger.warning("Dropping %d row(s) as %s; the first is %s.", count, reason, read.first_dropped[reason])
    if len(pairs) < 2:
        raise ValueError(
            f"Only {len(pairs)} usable pair(s) in {', '.join(read.rows_read)} after dropping "
            f"{dict(read.rows_dropped)}; "
            "at least 2 are needed."
        )
    overlaps = count_overlaps(pairs)
    logger.info("%d pairs: %s.", len(pairs), overlaps)

    # 3. Split by query (or by row) with the seeded choice.
    to_validation = choose_validation_rows(pairs, outputs)
    if outputs.validation_split == 0:
        logger.info("--validation_split 0: writing no validation file.")
    train = [pair for pair, is_validation in zip(pairs, to_validation.tolist()) if not is_validation]
    validation = [pair for pair, is_validation in zip(pairs, to_validation.tolist()) if is_validation]
    leaked_queries = len({pair.query for pair in validation} & {pair.query for pair in train})
    if leaked_queries:
        logger.warning("--split_by row: %d validation queries also appear in train.", leaked_queries)

    # 4. Write the CSVs and the statistics.
    output_dir = Path(outputs.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    header = [outputs.query_column_out, outputs.positive_column_out]
    splits = {"train": train, "validation": validation} if validation else {"train": train}
    written = {
        split: write_csv(output_dir / f"{split}.csv", header, ((pair.query, pair.positive) for pair in rows))
        for split, rows in splits.items()
    }
    stale_validation = output_dir / "validation.csv"
    if not validation and stale_validation.exists():
        logger.warning("Removing %s from an earlier run, because this run writes no validation file.", stale_validation)
        stale_validation.unlink()
    stats = {
        "rows_read": read.rows_read,
        "rows_written": written,
        "rows_dropped": dict(read.rows_dropped),
        "duplicate_pairs": read.rows_dropped["duplicate_pair"],
        **overlaps,
        "split_by": outputs.split_by,
        "validation_queries_in_train": leaked_queries,
        "validation_split": outputs.validation_split,
        "seed": outputs.seed,
        "min_score": inputs.min_score if inputs.beir_dir is not None else None,
    }
    write_json(output_dir / "prepare_stats.json", stats)
    logger.info("Wrote %s to %s.", ", ".join(f"{count} {split} rows" for split, count in written.items()), output_dir)
    return stats


if __name__ == "__main__":
    run_script(main)
