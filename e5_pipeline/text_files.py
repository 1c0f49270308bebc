"""Input side of the prepare scripts: path expansion, block-wise decoding with byte offsets, blank checks.

Files are read in binary blocks that end on a line break and each block is decoded at once, so
a decoding error can name the exact byte offset and line, and the per-line work stays in C
(`str.split`, `map`). Lines end at `\\n` only, with `\\r\\n` accepted; Unicode line and paragraph
separators inside a line stay inside it.
"""

import codecs
import glob
import gzip
import os
import tempfile
from collections.abc import Iterator, Sequence
from itertools import repeat
from pathlib import Path

import numpy as np

# Bytes read per block; a block is then cut back to its last line break. Read at call time, so
# tests can lower it to cross block boundaries on small files.
BLOCK_SIZE = 8 * 1024 * 1024

# Suffixes of the files taken from a directory given as input; each may also end in ".gz".
TEXT_FILE_SUFFIXES = (".txt", ".text", ".jsonl")

# Characters that carry no text: every Unicode whitespace character (the last one is U+3000) and
# the zero-width characters that `str.isspace` does not cover.
ZERO_WIDTH_CHARACTERS = "\u200b\u200c\u200d\u2060\ufeff\u180e"
INVISIBLE_CHARACTERS = "".join(chr(code) for code in range(0x3001) if chr(code).isspace()) + ZERO_WIDTH_CHARACTERS


def check_encoding(encoding: str) -> str:
    """Return the codec name to decode blocks with, or raise if `encoding` cannot be read line by line.

    Raises:
        ValueError: the codec is unknown, or it does not encode "\\n" as the single byte 0x0A
            (UTF-16 and UTF-32), so lines could not be split on bytes.
    """
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise ValueError(
            f"--encoding {encoding!r} is not a known codec; use a Python codec name such as 'utf-8', 'latin-1' "
            "or 'cp1252'."
        ) from None
    if not "a\nb".encode(name).endswith(b"a\nb"):
        raise ValueError(
            f"--encoding {encoding!r} is not supported: lines are split on the byte 0x0A, which needs an "
            "ASCII-compatible encoding. Convert the file to UTF-8 first, e.g. `iconv -f UTF-16 -t UTF-8`."
        )
    # A byte-order mark is removed at the start of each file, so "utf-8-sig" would be redundant and,
    # applied per block, would also eat a U+FEFF that starts a later block.
    return "utf-8" if name == "utf-8-sig" else name


def is_gzip_path(path: str | os.PathLike) -> bool:
    return str(path).endswith(".gz")


def is_jsonl_path(path: str | os.PathLike) -> bool:
    return str(path).removesuffix(".gz").endswith(".jsonl")


def expand_input_paths(patterns: Sequence[str]) -> list[Path]:
    """Expand files, directories and glob patterns into a list of files, in the order given.

    A directory contributes its files ending in `TEXT_FILE_SUFFIXES` (optionally `.gz`), sorted by
    name, without recursion and without hidden files. A glob pattern contributes its matching
    files, sorted.

    Raises:
        FileNotFoundError: a path does not exist, a pattern matches no file, or a directory has no text file.
        ValueError: the same file is reached twice, which would read its lines twice.
    """
    files: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(
                entry
                for entry in path.iterdir()
                if entry.is_file()
                and not entry.name.startswith(".")
                and entry.name.removesuffix(".gz").endswith(TEXT_FILE_SUFFIXES)
            )
            if not found:
                raise FileNotFoundError(
                    f"Input directory {str(path)!r} contains no text file (names ending in "
                    f"{', '.join(TEXT_FILE_SUFFIXES)}, optionally .gz); name the files directly."
                )
            files.extend(found)
        elif glob.has_magic(pattern):
            found = sorted(Path(match) for match in glob.glob(pattern) if Path(match).is_file())
            if not found:
                raise FileNotFoundError(f"Input pattern {pattern!r} matches no file.")
            files.extend(found)
        else:
            raise FileNotFoundError(f"Input file {pattern!r} not found.")

    seen: dict[Path, Path] = {}
    for file in files:
        resolved = file.resolve()
        if resolved in seen:
            raise ValueError(
                f"Input file {str(file)!r} is listed twice (also as {str(seen[resolved])!r}), so its lines would be "
                "read twice; list each file once."
            )
        seen[resolved] = file
    return files


def check_output_dir(
    output_dir: str | os.PathLike, input_paths: Sequence[str | os.PathLike], output_names: Sequence[str]
) -> None:
    """Check that `output_dir` can be written to and that no output would overwrite an input.

    Raises:
        ValueError: `output_dir` is a file, cannot be created or written to, is one of the input
            paths, or an output file would overwrite an input file.
    """
    check_writable_dir(output_dir)
    output_dir = Path(output_dir).resolve()
    outputs = {output_dir / name for name in output_names}
    for input_path in input_paths:
        resolved = Path(input_path).resolve()
        if resolved == output_dir:
            raise ValueError(
                f"--output_dir {str(output_dir)!r} is also an input path; write the output to another directory."
            )
        if resolved in outputs:
            raise ValueError(
                f"Input file {str(input_path)!r} would be overwritten by the output {resolved.name!r}; choose another "
                "--output_dir."
            )


def check_writable_dir(output_dir: str | os.PathLike, flag: str = "--output_dir") -> None:
    """Raise ValueError naming `flag` unless `output_dir` is, or can be created as, a writable directory.

    A directory that does not exist yet is created to test this and removed again, with any
    parents created for it, so a failed run leaves nothing behind.
    """
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {str(output_dir)!r} is a file, not a directory; choose another {flag}.")
    created = []
    try:
        missing = []
        ancestor = path
        while not ancestor.exists():
            missing.append(ancestor)
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise ValueError(
                f"{flag} {str(output_dir)!r} cannot be created because {str(ancestor)!r} is a file; choose another {flag}."
            )
        for directory in reversed(missing):
            directory.mkdir()
            created.append(directory)
        # Root passes every permission check of os.access, so only writing a file proves the folder is writable.
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        action = "written to" if path.is_dir() else "created"
        raise ValueError(
            f"{flag} {str(output_dir)!r} cannot be {action} ({error.strerror or error}); choose a directory that "
            "you can write to."
        ) from None
    finally:
        for directory in reversed(created):
            directory.rmdir()


class DecodingError(ValueError):
    """An input file contains bytes that the chosen encoding cannot decode."""


def iter_text_blocks(path: str | os.PathLike, encoding: str, progress=None) -> Iterator[tuple[str, int]]:
    """Yield `(text, first_line_number)` for consecutive blocks of whole lines of `path`.

    Each `text` ends with "\\n" except possibly the last one, which contains a final line without a
    line break. A byte-order mark at the start of the file is removed. `.gz` files are decompressed.
    `progress` is an optional tqdm bar advanced by the bytes read from disk.

    Raises:
        DecodingError: the message names the file, the byte offset, the line and the bytes, and
            suggests `--encoding`.
        ValueError: a `.gz` file is not valid gzip data.
    """
    with open(path, "rb") as raw:
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if is_gzip_path(path) else raw
        offset = 0  # offset of `pending` in the (decompressed) byte stream
        line_number = 1
        pending = b""
        disk_position = 0
        while True:
            try:
                chunk = stream.read(BLOCK_SIZE)
            except (gzip.BadGzipFile, EOFError, OSError) as error:
                raise ValueError(
                    f"{path}: invalid gzip data ({error}); check the file or remove the .gz suffix."
                ) from None
            data = pending + chunk if pending else chunk
            if chunk:
                cut = data.rfind(b"\n") + 1
                if cut == 0:  # one line longer than a block
                    pending = data
                    continue
                block, pending = data[:cut], data[cut:]
            else:
                block, pending = data, b""
                if not block:
                    break

            try:
                text = block.decode(encoding)
            except UnicodeDecodeError as error:
                bad_offset = offset + error.start
                bad_line = line_number + block.count(b"\n", 0, error.start)
                where = "of the decompressed data " if is_gzip_path(path) else ""
                raise DecodingError(
                    f"{path}: cannot decode byte(s) {error.object[error.start:error.end]!r} at byte offset "
                    f"{bad_offset} {where}(line {bad_line}) with encoding {encoding!r} ({error.reason}). Pass the "
                    "file's encoding with --encoding, for example --encoding latin-1 or --encoding cp1252, "
                    "or fix those bytes."
                ) from None
            if offset == 0 and text.startswith("\ufeff"):
                text = text[1:]
            yield text, line_number

            offset += len(block)
            line_number += block.count(b"\n")
            if progress is not None:
                position = raw.tell()
                progress.update(position - disk_position)
                disk_position = position


def split_lines(text: str) -> list[str]:
    """Split a block from `iter_text_blocks` into lines without their "\\n" or "\\r\\n"."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def visible_lengths(texts: Sequence[str]) -> np.ndarray:
    """Return the length of each text without its leading and trailing whitespace and zero-width characters.

    A length of 0 means the text contains nothing else.
    """
    stripped = map(str.strip, texts, repeat(INVISIBLE_CHARACTERS))
    return np.fromiter(map(len, stripped), dtype=np.int64, count=len(texts))


def is_blank(text: str) -> bool:
    return not text.strip(INVISIBLE_CHARACTERS)
