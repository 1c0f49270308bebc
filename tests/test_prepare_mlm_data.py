"""Tests of prepare_mlm_data.py on small files written by each test, and on the real Cranfield corpus."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

import prepare_mlm_data
from e5_pipeline import splits, text_files
from e5_pipeline.beir import load_corpus
from e5_pipeline.csv_io import load_csv_dataset, write_csv

# Texts that a careless CSV round trip corrupts: delimiters, quotes, missing-value words, numbers
# with leading zeros, separators that str.splitlines would split on, and outer whitespace.
TRICKY_TEXTS = [
    "plain words",
    "a, comma",
    'a "quoted" word',
    '"starts and ends with quotes"',
    "a\ttab",
    "NA",
    "null",
    "nan",
    "None",
    "N/A",
    "007",
    "line\u2028separator and paragraph\u2029separator",
    "vertical\x0btab, form\x0cfeed, next\x85line",
    "a lone \r carriage return",
    "  outer spaces kept  ",
    "ünïcödé and emoji \U0001f600",
]


def write_lines(path, lines, newline="\n", encoding="utf-8"):
    path.write_bytes(newline.join(lines).encode(encoding) + newline.encode(encoding))
    return path


def empty_file(path):
    path.touch()
    return path


def run(input_paths, output_dir, *extra):
    args = ["--input_files", *map(str, input_paths), "--output_dir", str(output_dir), *extra]
    return prepare_mlm_data.main(args)


def read_split(output_dir, split, column="text"):
    dataset = load_csv_dataset({split: str(output_dir / f"{split}.csv")}, [column])
    return list(dataset[split][column])


def assert_counts_add_up(stats):
    assert sum(stats["rows_read"].values()) == sum(stats["rows_written"].values()) + sum(stats["rows_dropped"].values())


def test_roundtrip_tricky_texts(tmp_path):
    source = write_lines(tmp_path / "corpus.txt", TRICKY_TEXTS)
    stats = run([source], tmp_path / "out", "--validation_split", "0")

    assert read_split(tmp_path / "out", "train") == TRICKY_TEXTS
    assert stats["rows_written"] == {"train": len(TRICKY_TEXTS)}
    assert_counts_add_up(stats)


def test_output_bytes_match_shared_writer(tmp_path):
    source = write_lines(tmp_path / "corpus.txt", TRICKY_TEXTS)
    run([source], tmp_path / "out", "--validation_split", "0")
    write_csv(tmp_path / "reference.csv", ["text"], [[text] for text in TRICKY_TEXTS])

    assert (tmp_path / "out" / "train.csv").read_bytes() == (tmp_path / "reference.csv").read_bytes()


def test_split_exact_size_and_seed(tmp_path):
    lines = [f"sentence number {index}" for index in range(100)]
    source = write_lines(tmp_path / "corpus.txt", lines)
    stats = run([source], tmp_path / "a", "--validation_split", "0.29", "--seed", "3")
    run([source], tmp_path / "b", "--validation_split", "0.29", "--seed", "3")
    run([source], tmp_path / "c", "--validation_split", "0.29", "--seed", "4")

    train, validation = read_split(tmp_path / "a", "train"), read_split(tmp_path / "a", "validation")
    assert stats["rows_written"] == {"train": 71, "validation": 29}
    assert len(validation) == 29
    assert sorted(train + validation) == sorted(lines)
    assert train == [line for line in lines if line not in set(validation)]
    assert read_split(tmp_path / "b", "validation") == validation
    assert read_split(tmp_path / "c", "validation") != validation


def test_line_breaks_and_blank_lines(tmp_path):
    lines = ["first", "", "   ", "\u200b\u2060\ufeff", "\u3000\xa0", "second\u2028still second", "third"]
    source = write_lines(tmp_path / "corpus.txt", lines, newline="\r\n")
    stats = run([source], tmp_path / "out", "--validation_split", "0")

    assert read_split(tmp_path / "out", "train") == ["first", "second\u2028still second", "third"]
    assert stats["rows_read"] == {str(source): 7}
    assert stats["rows_dropped"] == {"blank": 4, "shorter_than_min_chars": 0, "duplicate": 0}
    assert_counts_add_up(stats)


def test_last_line_without_newline(tmp_path):
    source = tmp_path / "corpus.txt"
    source.write_text("one\ntwo\nthree", encoding="utf-8")
    stats = run([source], tmp_path / "out", "--validation_split", "0")

    assert read_split(tmp_path / "out", "train") == ["one", "two", "three"]
    assert stats["rows_read"] == {str(source): 3}


def test_byte_order_mark_removed(tmp_path):
    source = tmp_path / "corpus.txt"
    source.write_bytes(b"\xef\xbb\xbffirst\nsecond\n")
    run([source], tmp_path / "out", "--validation_split", "0")

    assert read_split(tmp_path / "out", "train") == ["first", "second"]


def test_file_with_only_byte_order_mark(tmp_path):
    bom_only = tmp_path / "bom.txt"
    bom_only.write_bytes(b"\xef\xbb\xbf")
    other = write_lines(tmp_path / "other.txt", ["one", "two"])
    stats = run([bom_only, other], tmp_path / "out", "--validation_split", "0")

    assert stats["rows_read"] == {str(bom_only): 0, str(other): 2}
    assert read_split(tmp_path / "out", "train") == ["one", "two"]


def test_min_chars(tmp_path):
    # Quotes count once each although the script measures lengths on CSV-escaped text.
    source = write_lines(tmp_path / "corpus.txt", ["ab", '"q"', '"', "abcd", "  abc  "])
    stats = run([source], tmp_path / "out", "--validation_split", "0", "--min_chars", "3")

    assert read_split(tmp_path / "out", "train") == ['"q"', "abcd", "  abc  "]
    assert stats["rows_dropped"] == {"blank": 0, "shorter_than_min_chars": 2, "duplicate": 0}
    assert_counts_add_up(stats)


def test_repeats_counted_not_dropped(tmp_path):
    first = write_lines(tmp_path / "a.txt", ["alpha", "beta", "alpha"])
    second = write_lines(tmp_path / "b.txt", ["beta", "gamma", "alpha"])
    stats = run([first, second], tmp_path / "out", "--validation_split", "0")

    assert stats["repeated_lines"] == 3
    assert stats["rows_written"] == {"train": 6}
    assert stats["rows_dropped"]["duplicate"] == 0


def test_deduplicate_keeps_first(tmp_path):
    first = write_lines(tmp_path / "a.txt", ["alpha", "beta", "alpha"])
    second = write_lines(tmp_path / "b.txt", ["beta", "gamma", "alpha"])
    stats = run([first, second], tmp_path / "out", "--validation_split", "0", "--deduplicate")

    assert read_split(tmp_path / "out", "train") == ["alpha", "beta", "gamma"]
    assert stats["repeated_lines"] == 3
    assert stats["rows_dropped"]["duplicate"] == 3
    assert stats["rows_read"] == {str(first): 3, str(second): 3}
    assert_counts_add_up(stats)


def test_directory_glob_gzip_and_jsonl(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_lines(data / "a.txt", ["from a"])
    with gzip.open(data / "b.txt.gz", "wt", encoding="utf-8") as handle:
        handle.write("from b, gzipped\nsecond of b\n")
    records = [{"_id": "1", "title": "Title", "text": "body one"}, {"_id": "2", "title": "", "text": "body two"}]
    write_lines(data / "c.jsonl", [json.dumps(record) for record in records])
    write_lines(data / "README.md", ["not a corpus file"])
    extra = tmp_path / "extra"
    extra.mkdir()
    write_lines(extra / "d1.txt", ["from d1"])
    write_lines(extra / "d2.txt", ["from d2"])

    stats = run(
        [data, str(extra / "d*.txt")], tmp_path / "out", "--validation_split", "0", "--jsonl_text_fields", "title,text"
    )

    expected = ["from a", "from b, gzipped", "second of b", "Title body one", "body two", "from d1", "from d2"]
    assert read_split(tmp_path / "out", "train") == expected
    assert list(stats["rows_read"]) == [str(data / name) for name in ("a.txt", "b.txt.gz", "c.jsonl")] + [
        str(extra / "d1.txt"),
        str(extra / "d2.txt"),
    ]


def test_jsonl_text_with_newlines(tmp_path):
    records = [{"text": "two\nlines"}, {"text": "  "}, {"text": 'with "quotes", commas'}]
    source = write_lines(tmp_path / "corpus.jsonl", [json.dumps(record) for record in records] + [""])
    stats = run([source], tmp_path / "out", "--validation_split", "0", "--jsonl_text_fields", "text")

    assert read_split(tmp_path / "out", "train") == ["two\nlines", 'with "quotes", commas']
    assert stats["rows_dropped"]["blank"] == 2
    assert_counts_add_up(stats)


def test_jsonl_null_field_is_empty(tmp_path):
    records = [
        {"_id": "1", "title": None, "text": "body one"},
        {"_id": "2", "title": "Title", "text": None},
        {"_id": "3", "title": None, "text": None},
    ]
    source = write_lines(tmp_path / "corpus.jsonl", [json.dumps(record) for record in records])
    stats = run([source], tmp_path / "out", "--validation_split", "0", "--jsonl_text_fields", "title,text")

    assert read_split(tmp_path / "out", "train") == ["body one", "Title"]
    assert stats["rows_dropped"]["blank"] == 1
    assert_counts_add_up(stats)


def test_small_blocks_match_one_block(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    words = ["alpha", "béta", "γάμμα", "NA", "", "  ", 'q"uote', "x" * 40]
    lines = [" ".join(rng.choice(words, size=rng.integers(0, 6))) for _ in range(300)]
    source = write_lines(tmp_path / "corpus.txt", lines, newline="\r\n")
    reference = run([source], tmp_path / "one_block", "--validation_split", "0.2", "--deduplicate", "--min_chars", "3")

    monkeypatch.setattr(text_files, "BLOCK_SIZE", 7)
    monkeypatch.setattr(splits, "SAMPLING_BLOCK", 16)
    small = run([source], tmp_path / "small_blocks", "--validation_split", "0.2", "--deduplicate", "--min_chars", "3")

    assert small["rows_written"] == reference["rows_written"]
    assert small["rows_dropped"] == reference["rows_dropped"]
    assert small["repeated_lines"] == reference["repeated_lines"]
    for split in ("train", "validation"):
        texts = read_split(tmp_path / "small_blocks", split)
        assert len(texts) == small["rows_written"][split]
        assert len(set(texts)) == len(texts)
    everything = read_split(tmp_path / "small_blocks", "train") + read_split(tmp_path / "small_blocks", "validation")
    expected = {line for line in lines if len(line.strip()) >= 3}
    assert set(everything) == expected
    assert_counts_add_up(small)


def test_validation_mask_exact_and_uniform(monkeypatch):
    monkeypatch.setattr(splits, "SAMPLING_BLOCK", 16)
    for total, size in [(1, 1), (8, 3), (9, 9), (100, 29), (1000, 1)]:
        mask = splits.choose_validation_mask(total, size, seed=0)
        assert np.unpackbits(mask, count=total).sum() == size

    hits = sum(np.unpackbits(splits.choose_validation_mask(50, 10, seed), count=50).astype(int) for seed in range(2000))
    # Each unit is chosen with probability 10/50, so about 400 times in 2000 draws (std 18).
    assert hits.min() > 320
    assert hits.max() < 480


def test_validation_split_zero_writes_no_file(tmp_path, caplog):
    source = write_lines(tmp_path / "corpus.txt", ["one", "two", "three"])
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    (output_dir / "validation.csv").write_text("stale", encoding="utf-8")

    stats = run([source], output_dir, "--validation_split", "0")

    assert not (output_dir / "validation.csv").exists()
    assert stats["rows_written"] == {"train": 3}
    assert "--validation_split 0: writing no validation file." in caplog.text
    assert json.loads((output_dir / "prepare_stats.json").read_text()) == stats


def test_decoding_error_names_offset(tmp_path):
    source = tmp_path / "corpus.txt"
    source.write_bytes("caf\u00e9\nfine\n".encode("utf-8") + b"bad \xff byte\n")
    output_dir = tmp_path / "out"

    with pytest.raises(ValueError, match=r"cannot decode byte\(s\) b'\\xff' at byte offset 15 \(line 3\).*--encoding"):
        run([source], output_dir)
    assert not output_dir.exists()

    stats = run([source], output_dir, "--encoding", "latin-1", "--validation_split", "0")
    assert stats["rows_written"] == {"train": 3}


def test_decoding_error_offset_in_later_block(tmp_path, monkeypatch):
    monkeypatch.setattr(text_files, "BLOCK_SIZE", 4)
    source = tmp_path / "corpus.txt"
    source.write_bytes(b"abc\ndefgh\nij\xfe\n")

    with pytest.raises(ValueError, match=r"b'\\xfe' at byte offset 12 \(line 3\)"):
        run([source], tmp_path / "out")


@pytest.mark.parametrize(
    ("make_input", "extra", "error", "message"),
    [
        (lambda tmp: [tmp / "missing.txt"], [], FileNotFoundError, r"Input file '.*missing.txt' not found"),
        (lambda tmp: [str(tmp / "*.none")], [], FileNotFoundError, r"Input pattern '.*\*.none' matches no file"),
        (lambda tmp: [tmp], [], FileNotFoundError, r"contains no text file"),
        (lambda tmp: [write_lines(tmp / "a.txt", ["x"])] * 2, [], ValueError, r"is listed twice"),
        (lambda tmp: [empty_file(tmp / "empty.txt")], [], ValueError, r"Input file '.*empty.txt' is empty"),
        (lambda tmp: [write_lines(tmp / "one.txt", ["only", "", " "])], [], ValueError, r"Only 1 usable line\(s\)"),
        (lambda tmp: [write_lines(tmp / "c.jsonl", ["{}"])], [], ValueError, r"--jsonl_text_fields title,text"),
        (
            lambda tmp: [write_lines(tmp / "c.jsonl", ['{"text": "x"}'])],
            ["--jsonl_text_fields", "title,text"],
            ValueError,
            r"c.jsonl, line 1: field 'title' is missing; the record has \['text'\]",
        ),
        (
            lambda tmp: [write_lines(tmp / "c.jsonl", ['{"title": 7, "text": "x"}'])],
            ["--jsonl_text_fields", "title,text"],
            ValueError,
            r"c.jsonl, line 1: field 'title' is int 7, expected a string or null\. Fix the record, or leave the "
            r"field out of --jsonl_text_fields\.$",
        ),
        (
            lambda tmp: [write_lines(tmp / "c.jsonl", ['{"text": "x"}', "{broken"])],
            ["--jsonl_text_fields", "text"],
            ValueError,
            r"c.jsonl, line 2: invalid JSON",
        ),
        (
            lambda tmp: [write_lines(tmp / "ten.txt", [f"line {i}" for i in range(10)])],
            ["--validation_split", "0.05"],
            ValueError,
            r"--validation_split 0.05 of 10 lines leaves 0 validation lines .*at least 0.1 \(1/10\)",
        ),
        (
            lambda tmp: [write_lines(tmp / "a.txt", ["x"])],
            ["--validation_split", "1"],
            ValueError,
            r"not a fraction in \[0, 1\)",
        ),
        (lambda tmp: [write_lines(tmp / "a.txt", ["x"])], ["--encoding", "utf-16"], ValueError, r"ASCII-compatible"),
        (lambda tmp: [write_lines(tmp / "a.txt", ["x"])], ["--encoding", "nope"], ValueError, r"not a known codec"),
        (
            lambda tmp: [write_lines(tmp / "a.txt", ["x"])],
            ["--min_chars", "-1"],
            ValueError,
            r"--min_chars -1 is negative",
        ),
    ],
)
def test_bad_input_writes_nothing(tmp_path, make_input, extra, error, message):
    inputs = make_input(tmp_path)
    output_dir = tmp_path / "out"

    with pytest.raises(error, match=message):
        run(inputs, output_dir, *extra)
    assert not output_dir.exists()


def test_output_dir_equal_to_input_dir(tmp_path):
    write_lines(tmp_path / "a.txt", ["one", "two"])

    with pytest.raises(ValueError, match=r"--output_dir '.*' is also an input path"):
        run([tmp_path], tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.txt"]


def test_output_would_overwrite_input(tmp_path):
    source = write_lines(tmp_path / "train.csv", ["one", "two"])

    with pytest.raises(ValueError, match=r"would be overwritten by the output 'train.csv'"):
        run([source], tmp_path)
    assert source.read_text() == "one\ntwo\n"


def test_output_dir_is_file(tmp_path):
    source = write_lines(tmp_path / "a.txt", ["one", "two"])
    plain_file = write_lines(tmp_path / "plainfile", ["not a directory"])

    with pytest.raises(ValueError, match=r"^--output_dir '.*plainfile' is a file, not a directory; choose another --output_dir\.$"):
        run([source], plain_file)
    with pytest.raises(ValueError, match=r"^--output_dir '.*plainfile/sub' cannot be created because '.*plainfile' is a file"):
        run([source], plain_file / "sub")
    assert plain_file.read_text() == "not a directory\n"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs the Linux /proc file system")
def test_output_dir_not_creatable(tmp_path):
    source = write_lines(tmp_path / "a.txt", ["one", "two"])

    with pytest.raises(ValueError, match=r"^--output_dir '/proc/nope' cannot be created \(.+\); choose a directory"):
        run([source], "/proc/nope")


def test_output_dir_probe_leaves_nothing(tmp_path):
    source = write_lines(tmp_path / "a.txt", ["x"])
    output_dir = tmp_path / "new" / "out"

    with pytest.raises(ValueError, match=r"Only 1 usable line"):
        run([source], output_dir)
    assert not (tmp_path / "new").exists()


def test_help_states_null_rule(capsys):
    with pytest.raises(SystemExit):
        prepare_mlm_data.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "A null value counts as empty text" in help_text


def test_invalid_gzip(tmp_path):
    source = tmp_path / "corpus.txt.gz"
    source.write_bytes(b"not gzip at all\n")

    with pytest.raises(ValueError, match=r"invalid gzip data"):
        run([source], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_help_on_every_field():
    for arguments in (prepare_mlm_data.InputArguments, prepare_mlm_data.OutputArguments):
        for field in arguments.__dataclass_fields__.values():
            assert field.metadata.get("help"), field.name


def test_cranfield_corpus(cranfield_dir, tmp_path):
    corpus_path = cranfield_dir / "corpus.jsonl"
    stats = run([corpus_path], tmp_path / "out", "--jsonl_text_fields", "title,text")

    # Two Cranfield documents have an empty title and text; they are read and dropped as blank.
    passages = [text for text in load_corpus(corpus_path).values() if text.strip()]
    assert stats["rows_read"] == {str(corpus_path): 1400}
    assert stats["rows_dropped"] == {"blank": 1400 - len(passages), "shorter_than_min_chars": 0, "duplicate": 0}
    assert stats["rows_written"] == {"train": len(passages) - len(passages) // 100, "validation": len(passages) // 100}
    assert_counts_add_up(stats)
    written = read_split(tmp_path / "out", "train") + read_split(tmp_path / "out", "validation")
    assert sorted(written) == sorted(passages)
