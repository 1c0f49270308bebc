"""Turn text files into the train and validation CSVs of the masked-language-modelling stage.

Example:
    python prepare_mlm_data.py --input_files corpus.txt more_texts/ --output_dir data/mlm

writes `data/mlm/train.csv` and `data/mlm/validation.csv` (one quoted column, `text`, one line of
input per row, in input order) and `data/mlm/prepare_stats.json` (rows read per file, rows
written per split, rows dropped per reason, repeated lines).

Inputs are plain text (one example per line), gzipped text (`.gz`) or JSON Lines (`.jsonl`,
with `--jsonl_text_fields title,text`, which reads a BEIR `corpus.jsonl`). The corpus is
streamed twice: the first pass checks and counts every line and stores a 64-bit hash per usable
line in temporary bucket files, the second pass writes each line to its split. Peak memory
therefore does not depend on the corpus size, apart from bit masks of one bit per line. The
bucket files take 16 bytes per line in the system's temporary directory (set TMPDIR to move them).
"""

import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import compress, repeat
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from e5_pipeline.cli import build_argument_parser
from e5_pipeline.csv_io import open_csv_writer
from e5_pipeline.logging_utils import run_script, setup_logging, write_json
from e5_pipeline.splits import check_validation_split, choose_validation_mask, mask_slice, validation_size
from e5_pipeline.text_files import (
    check_encoding,
    check_output_dir,
    expand_input_paths,
    is_blank,
    is_jsonl_path,
    iter_text_blocks,
    split_lines,
    visible_lengths,
)

logger = logging.getLogger(__name__)

OUTPUT_NAMES = ("train.csv", "validation.csv", "prepare_stats.json")

# Reasons a line is dropped, as they appear under "rows_dropped" in prepare_stats.json.
BLANK = "blank"
TOO_SHORT = "shorter_than_min_chars"
DUPLICATE = "duplicate"


@dataclass
class InputArguments:
    input_files: list[str] = field(
        metadata={
            "help": "One or more input files, directories or glob patterns, read in the order given. A directory "
            "contributes its .txt, .text and .jsonl files (each optionally .gz), sorted by name. Plain text "
            "has one example per line; .gz files are decompressed; .jsonl files are read as JSON Lines."
        }
    )
    jsonl_text_fields: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated fields of each JSON Lines record whose values are joined with a space into "
            "one example, e.g. 'title,text' for a BEIR corpus.jsonl. A null value counts as empty text (BEIR "
            "corpora leave titles empty); a missing field or a value that is not a string is an error. "
            "Required when an input is .jsonl."
        },
    )
    encoding: str = field(
        default="utf-8",
        metadata={
            "help": "Text encoding of the input files (a Python codec name). A UTF-8 byte-order mark is removed."
        },
    )
    min_chars: int = field(
        default=1,
        metadata={
            "help": "Minimum length of a line in characters, leading and trailing whitespace not counted; shorter "
            "lines are dropped and counted. Lines of only whitespace or zero-width characters are always dropped."
        },
    )
    deduplicate: bool = field(
        default=False,
        metadata={
            "help": "Drop exact repeats of an earlier line (the first occurrence is kept). Off by default; the "
            "number of repeated lines is reported in prepare_stats.json either way."
        },
    )


@dataclass
class OutputArguments:
    output_dir: str = field(
        metadata={"help": "Directory for train.csv, validation.csv and prepare_stats.json; created if missing."}
    )
    text_column: str = field(default="text", metadata={"help": "Name of the text column in the output CSVs."})
    validation_split: float = field(
        default=0.01,
        metadata={
            "help": "Fraction of the usable lines written to validation.csv, in [0, 1). The validation set contains "
            "exactly floor(lines * fraction) lines chosen at random with --seed; 0 writes no validation file."
        },
    )
    seed: int = field(default=42, metadata={"help": "Seed of the random choice of validation lines."})


def parse_field_list(value: str) -> list[str]:
    """Split the comma-separated --jsonl_text_fields value, rejecting empty names."""
    fields = [name.strip() for name in value.split(",")]
    if not all(fields):
        raise ValueError(f"--jsonl_text_fields {value!r} contains an empty field name; use e.g. 'title,text'.")
    return fields


def check_arguments(inputs: InputArguments, outputs: OutputArguments) -> tuple[list[Path], str, list[str] | None]:
    """Check every argument and input path before any reading; return the files, codec and JSON fields."""
    check_validation_split(outputs.validation_split)
    if inputs.min_chars < 0:
        raise ValueError(f"--min_chars {inputs.min_chars!r} is negative; use 1 to keep every non-blank line.")
    if not outputs.text_column:
        raise ValueError("--text_column is empty; name the output column, e.g. --text_column text.")
    encoding = check_encoding(inputs.encoding)
    files = expand_input_paths(inputs.input_files)
    fields = parse_field_list(inputs.jsonl_text_fields) if inputs.jsonl_text_fields is not None else None
    for path in files:
        if is_jsonl_path(path) and fields is None:
            raise ValueError(
                f"{path} is JSON Lines; name the fields that contain the text, e.g. --jsonl_text_fields title,text."
            )
        if path.stat().st_size == 0:
            raise ValueError(f"Input file {str(path)!r} is empty; remove it from --input_files or fill it.")
    check_output_dir(outputs.output_dir, [*inputs.input_files, *files], OUTPUT_NAMES)
    return files, encoding, fields


def jsonl_texts(lines: list[str], path: Path, first_line_number: int, fields: list[str]) -> list[str]:
    """Turn each JSON Lines record into one text: its `fields` stripped and joined by a space.

    Empty and null fields are left out of the join. A blank line gives an empty text, which is
    then dropped and counted as blank.
    """
    texts = []
    for line_number, line in enumerate(lines, start=first_line_number):
        if is_blank(line):
            texts.append("")
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}, line {line_number}: invalid JSON ({error.msg}, column {error.colno}); fix the line, or "
                "rename the file if it is plain text."
            ) from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}, line {line_number}: expected a JSON object, found {type(record).__name__}.")
        parts = []
        for name in fields:
            if name not in record:
                raise ValueError(
                    f"{path}, line {line_number}: field {name!r} is missing; the record has {sorted(record)!r}. "
                    "Pass only fields that every record has to --jsonl_text_fields."
                )
            value = record[name]
            if value is None:
                continue
            if not isinstance(value, str):
                raise ValueError(
                    f"{path}, line {line_number}: field {name!r} is {type(value).__name__} {value!r}, expected a "
                    "string or null. Fix the record, or leave the field out of --jsonl_text_fields."
                )
            if value.strip():
                parts.append(value.strip())
        texts.append(" ".join(parts))
    return texts


def iter_escaped_texts(
    path: Path, encoding: str, fields: list[str] | None, progress
) -> Iterator[tuple[list[str], int]]:
    """Yield `(texts, first_line_number)` per block of `path`, one text per physical line, quotes doubled.

    Each text comes with every double quote doubled, as it appears between the quotes of a CSV
    field, because escaping a whole block at once is much faster than escaping line by line.
    Doubling quotes maps equal texts to equal texts, so repeats are found on these texts too.
    """
    for block, first_line_number in iter_text_blocks(path, encoding, progress=progress):
        if fields is not None and is_jsonl_path(path):
            texts = jsonl_texts(split_lines(block), path, first_line_number, fields)
            yield [text.replace('"', '""') for text in texts], first_line_number
        else:
            yield split_lines(block.replace('"', '""')), first_line_number


def usable_mask(escaped_texts: list[str], min_chars: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return boolean arrays (usable, blank, too short) over texts whose double quotes are doubled."""
    lengths = visible_lengths(escaped_texts)
    if min_chars > 1 and any('"' in text for text in escaped_texts):
        # Each quote of the original text counts once.
        lengths -= (
            np.fromiter(map(str.count, escaped_texts, repeat('"')), dtype=np.int64, count=len(escaped_texts)) // 2
        )
    blank = lengths == 0
    too_short = ~blank & (lengths < min_chars)
    return ~(blank | too_short), blank, too_short


def write_quoted_rows(handle, escaped_texts: list[str]) -> None:
    """Write escaped texts to a binary file as one-column CSV rows, every field quoted, "\\n" endings.

    The bytes equal those of the shared CSV writer; one `join` avoids its per-row work.
    """
    if escaped_texts:
        handle.write(('"' + '"\n"'.join(escaped_texts) + '"\n').encode("utf-8"))


class HashBuckets:
    """The 64-bit hash and index of every usable line, spread over 256 temporary files by the hash's top byte.

    Each bucket is later sorted alone, so finding repeats needs memory for one bucket only
    (16 bytes per line / 256).
    """

    RECORD = np.dtype([("hash", "<u8"), ("index", "<i8")])

    def __init__(self, directory: str):
        self.directory = Path(directory)
        self.files = [open(self.directory / f"{bucket:03d}.bin", "wb") for bucket in range(256)]

    def add(self, texts: list[str], first_index: int) -> None:
        # Python's string hash is SipHash, 64 bits wide and seeded per process, which is enough
        # because both passes run in the same process.
        hashes = np.fromiter(map(hash, texts), dtype=np.int64, count=len(texts)).view(np.uint64)
        records = np.empty(len(texts), dtype=self.RECORD)
        records["hash"] = hashes
        records["index"] = np.arange(first_index, first_index + len(texts))
        buckets = (hashes >> np.uint64(56)).astype(np.intp)
        order = np.argsort(buckets, kind="stable")
        counts = np.bincount(buckets, minlength=256)
        start = 0
        for bucket in np.flatnonzero(counts):
            stop = start + counts[bucket]
            records[order[start:stop]].tofile(self.files[bucket])
            start = stop

    def close(self) -> None:
        for handle in self.files:
            handle.close()

    def repeat_mask(self, total: int) -> tuple[np.ndarray, int]:
        """Return a packed bit mask of the lines that repeat an earlier line, and their count.

        NOTE: two different lines with the same 64-bit hash count as a repeat. The chance of any
        collision is about n**2 / 2**65 for n lines, or 3e-6 for ten million lines.
        """
        self.close()
        mask = np.zeros((total + 7) // 8, dtype=np.uint8)
        repeated = 0
        for bucket in range(256):
            records = np.fromfile(self.directory / f"{bucket:03d}.bin", dtype=self.RECORD)
            if records.size < 2:
                continue
            # Indices grow within a bucket file, so a stable sort keeps the first occurrence first.
            records = records[np.argsort(records["hash"], kind="stable")]
            is_repeat = np.zeros(records.size, dtype=bool)
            is_repeat[1:] = records["hash"][1:] == records["hash"][:-1]
            indices = records["index"][is_repeat]
            np.bitwise_or.at(mask, indices >> 3, (np.uint8(0x80) >> (indices & 7).astype(np.uint8)))
            repeated += int(indices.size)
        return mask, repeated


@dataclass
class CorpusScan:
    """Counts per file and drop reason from the first pass, and the masks of usable lines."""

    rows_read: dict[str, int] = field(default_factory=dict)
    rows_dropped: Counter = field(default_factory=lambda: Counter({BLANK: 0, TOO_SHORT: 0, DUPLICATE: 0}))
    first_dropped: dict[str, str] = field(default_factory=dict)
    usable: int = 0
    # Per block read: its number of lines and a packed bit mask of its usable lines, so the
    # second pass needs no text checks.
    usable_bits: list[tuple[int, np.ndarray]] = field(default_factory=list)


def scan_corpus(files, encoding, fields, min_chars, buckets: HashBuckets) -> CorpusScan:
    """First pass: read and check every line, count drops, and hash the usable lines into `buckets`."""
    scan = CorpusScan()
    total_bytes = sum(path.stat().st_size for path in files)
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="Checking lines") as progress:
        for path in files:
            read = 0
            for texts, first_line_number in iter_escaped_texts(path, encoding, fields, progress):
                usable, blank, too_short = usable_mask(texts, min_chars)
                for reason, dropped in ((BLANK, blank), (TOO_SHORT, too_short)):
                    count = int(dropped.sum())
                    scan.rows_dropped[reason] += count
                    if count and reason not in scan.first_dropped:
                        scan.first_dropped[reason] = f"{path}, line {first_line_number + int(np.argmax(dropped))}"
                kept = list(compress(texts, usable.tolist()))
                buckets.add(kept, scan.usable)
                scan.usable += len(kept)
                scan.usable_bits.append((len(texts), np.packbits(usable)))
                read += len(texts)
            scan.rows_read[str(path)] = read
    return scan


# Destinations of a line in the second pass.
DROPPED, TRAIN, VALIDATION = 0, 1, 2


class LineRouter:
    """Second pass: route every line of the corpus to train, validation or nowhere, block by block.

    A line's destination follows from three bit masks: usable lines (from the first pass),
    repeats (with --deduplicate) and validation lines (over the lines kept).
    """

    def __init__(self, scan: CorpusScan, repeat_mask: np.ndarray | None, validation_mask: np.ndarray | None):
        self.scan = scan
        self.repeat_mask = repeat_mask
        self.validation_mask = validation_mask
        self.block_index = self.usable_index = self.kept_index = 0

    def next_destinations(self, line_count: int) -> np.ndarray:
        """Return the destination of each of the `line_count` lines of the next block."""
        expected_count, bits = self.scan.usable_bits[self.block_index]
        self.block_index += 1
        if line_count != expected_count:
            raise RuntimeError("An input file changed between the two passes; run the script again.")
        usable = np.unpackbits(bits, count=line_count).astype(bool)

        positions = np.flatnonzero(usable)
        start, self.usable_index = self.usable_index, self.usable_index + positions.size
        if self.repeat_mask is not None:
            positions = positions[~mask_slice(self.repeat_mask, start, self.usable_index)]
        destinations = np.full(line_count, DROPPED, dtype=np.int8)
        destinations[positions] = TRAIN
        start, self.kept_index = self.kept_index, self.kept_index + positions.size
        if self.validation_mask is not None:
            destinations[positions[mask_slice(self.validation_mask, start, self.kept_index)]] = VALIDATION
        return destinations


def encode_escaped_block(text: str) -> bytes:
    """Return a block as UTF-8 with quotes doubled, "\\r\\n" turned into "\\n" and a final "\\n"."""
    text = text.replace('"', '""')
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    if text and not text.endswith("\n"):
        text += "\n"
    return text.encode("utf-8")


def write_line_runs(handle, block: bytes, line_ends: np.ndarray, selected: np.ndarray) -> int:
    """Write the selected lines of an escaped UTF-8 block as quoted CSV rows; return how many.

    Consecutive selected lines are copied as one slice and quoted with one `bytes.replace`, so the
    work is per run of lines rather than per line. `line_ends` contains the offset of each "\\n".
    The bytes equal those of the shared CSV writer: every field quoted, "\n" line endings.
    """
    count = int(np.count_nonzero(selected))
    if count == 0:
        return 0
    edges = np.flatnonzero(np.diff(np.concatenate(([False], selected, [False])).astype(np.int8)))
    run_firsts, run_stops = edges[0::2], edges[1::2]
    line_starts = np.concatenate(([0], line_ends[:-1] + 1))
    slices = zip(line_starts[run_firsts].tolist(), (line_ends[run_stops - 1] + 1).tolist())
    body = b"".join([block[first:stop] for first, stop in slices]).replace(b"\n", b'"\n"')
    handle.write(b'"')
    handle.write(memoryview(body)[:-1])
    return count


def write_splits(files, encoding, fields, router: LineRouter, output_paths: dict[str, Path], text_column: str):
    """Second pass: write each line to the split that `router` gives it; return rows written per split."""
    handles = {}
    for split, path in output_paths.items():
        # The header goes through the shared writer; rows go to the binary layer after a flush.
        handle, _ = open_csv_writer(path, [text_column])
        handle.flush()
        handles[split] = handle
    codes = {"train": TRAIN, "validation": VALIDATION}
    written = dict.fromkeys(handles, 0)
    total_bytes = sum(path.stat().st_size for path in files)
    try:
        with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="Writing CSVs") as progress:
            for path in files:
                if fields is not None and is_jsonl_path(path):
                    for texts, _ in iter_escaped_texts(path, encoding, fields, progress):
                        destinations = router.next_destinations(len(texts)).tolist()
                        for split, handle in handles.items():
                            selected = [code == codes[split] for code in destinations]
                            rows = list(compress(texts, selected))
                            write_quoted_rows(handle.buffer, rows)
                            written[split] += len(rows)
                    continue
                for text, _ in iter_text_blocks(path, encoding, progress=progress):
                    block = encode_escaped_block(text)
                    line_ends = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == ord("\n"))
                    destinations = router.next_destinations(line_ends.size)
                    for split, handle in handles.items():
                        written[split] += write_line_runs(handle.buffer, block, line_ends, destinations == codes[split])
    finally:
        for handle in handles.values():
            handle.close()
    return written


def main(args: list[str] | None = None) -> dict:
    """Run the script on `args` (default: the command line) and return the statistics it wrote."""
    setup_logging()
    parser = build_argument_parser((InputArguments, OutputArguments))
    inputs, outputs = parser.parse_args_into_dataclasses(args=args)
    logger.info("Input arguments: %s", inputs)
    logger.info("Output arguments: %s", outputs)

    # 1. Check the arguments and the input paths before reading any line.
    files, encoding, fields = check_arguments(inputs, outputs)
    logger.info("Reading %d input file(s): %s", len(files), ", ".join(map(str, files)))

    with tempfile.TemporaryDirectory(prefix="prepare_mlm_data_") as temporary_dir:
        # 2. First pass: check every line, count drops and hash the usable lines.
        buckets = HashBuckets(temporary_dir)
        try:
            scan = scan_corpus(files, encoding, fields, inputs.min_chars, buckets)
        finally:
            buckets.close()
        for reason, count in scan.rows_dropped.items():
            if count:
                logger.warning("Dropping %d line(s) as %s; the first is %s.", count, reason, scan.first_dropped[reason])

        # 3. Find lines that repeat an earlier line, within and across files.
        repeat_mask, repeated_lines = buckets.repeat_mask(scan.usable)
    if inputs.deduplicate:
        scan.rows_dropped[DUPLICATE] = repeated_lines
        if repeated_lines:
            logger.warning("--deduplicate: dropping %d line(s) that repeat an earlier line.", repeated_lines)
    elif repeated_lines:
        logger.info("%d line(s) repeat an earlier line; pass --deduplicate to drop them.", repeated_lines)
    kept = scan.usable - (repeated_lines if inputs.deduplicate else 0)
    if kept < 2:
        raise ValueError(
            f"Only {kept} usable line(s) in {', '.join(map(str, files))} after dropping "
            f"{dict(scan.rows_dropped)}; at least 2 are needed. Check the files, --min_chars and --encoding."
        )

    # 4. Choose the validation lines.
    validation_count = validation_size(kept, outputs.validation_split, "lines")
    output_dir = Path(outputs.output_dir)
    if validation_count == 0:
        logger.info("--validation_split 0: writing no validation file.")
        validation_mask = None
    else:
        validation_mask = choose_validation_mask(kept, validation_count, outputs.seed)
        logger.info(
            "Validation: %d of %d lines (floor(%d * %r)), seed %d.",
            validation_count,
            kept,
            kept,
            outputs.validation_split,
            outputs.seed,
        )

    # 5. Second pass: write the CSVs under temporary names, check the counts, then rename them.
    output_dir.mkdir(parents=True, exist_ok=True)
    splits = ["train"] + (["validation"] if validation_mask is not None else [])
    temporary_paths = {split: output_dir / f".{split}.csv.tmp" for split in splits}
    try:
        router = LineRouter(scan, repeat_mask if inputs.deduplicate else None, validation_mask)
        written = write_splits(files, encoding, fields, router, temporary_paths, outputs.text_column)
        if sum(scan.rows_read.values()) != sum(written.values()) + sum(scan.rows_dropped.values()):
            raise RuntimeError(
                f"Row counts do not add up: read {scan.rows_read}, written {written}, dropped "
                f"{dict(scan.rows_dropped)}; an input file probably changed while it was being read."
            )
    except BaseException:
        for path in temporary_paths.values():
            path.unlink(missing_ok=True)
        raise
    for split, path in temporary_paths.items():
        os.replace(path, output_dir / f"{split}.csv")
    stale_validation = output_dir / "validation.csv"
    if validation_mask is None and stale_validation.exists():
        logger.warning("Removing %s from an earlier run, because this run writes no validation file.", stale_validation)
        stale_validation.unlink()

    # 6. Write the statistics beside the CSVs.
    stats = {
        "input_files": [str(path) for path in files],
        "rows_read": scan.rows_read,
        "rows_written": written,
        "rows_dropped": dict(scan.rows_dropped),
        "repeated_lines": repeated_lines,
        "deduplicate": inputs.deduplicate,
        "min_chars": inputs.min_chars,
        "validation_split": outputs.validation_split,
        "seed": outputs.seed,
        "text_column": outputs.text_column,
    }
    write_json(output_dir / "prepare_stats.json", stats)
    logger.info("Wrote %s to %s.", ", ".join(f"{count} {split} rows" for split, count in written.items()), output_dir)
    return stats


if __name__ == "__main__":
    run_script(main)
