"""Tests of prepare_contrastive_data.py on small files written by each test, and on the real Cranfield qrels."""

import csv
import json

import pytest

import prepare_contrastive_data
from e5_pipeline.beir import load_corpus, load_queries
from e5_pipeline.csv_io import load_csv_dataset

TRICKY_PAIRS = [
    ("what is NA", "NA"),
    ("null", "nan"),
    ("None", "N/A"),
    ("a, comma", 'a "quoted" passage'),
    ("007", "line\u2028separator stays"),
    ("  outer spaces  ", "ünïcödé \U0001f600"),
]


def write_text(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def write_tsv(path, rows, header=("query", "positive")):
    lines = (["\t".join(header)] if header else []) + ["\t".join(row) for row in rows]
    return write_text(path, "\n".join(lines) + "\n")


def run(output_dir, *args):
    return prepare_contrastive_data.main([*map(str, args), "--output_dir", str(output_dir)])


def read_pairs(output_dir, split, columns=("query", "positive")):
    dataset = load_csv_dataset({split: str(output_dir / f"{split}.csv")}, list(columns))[split]
    return list(zip(*(list(dataset[column]) for column in columns)))


def assert_counts_add_up(stats):
    assert sum(stats["rows_read"].values()) == sum(stats["rows_written"].values()) + sum(stats["rows_dropped"].values())


def many_pairs(queries=20, positives_per_query=3):
    return [(f"query {q}", f"passage {q}-{p}") for q in range(queries) for p in range(positives_per_query)]


def test_tsv_roundtrip(tmp_path):
    source = write_tsv(tmp_path / "pairs.tsv", TRICKY_PAIRS)
    stats = run(tmp_path / "out", "--input_file", source, "--validation_split", "0")

    assert read_pairs(tmp_path / "out", "train") == TRICKY_PAIRS
    assert stats["rows_read"] == {str(source): len(TRICKY_PAIRS)}
    assert stats["rows_written"] == {"train": len(TRICKY_PAIRS)}
    assert_counts_add_up(stats)


def test_tsv_quotes_are_text_and_crlf(tmp_path):
    source = write_text(tmp_path / "pairs.tsv", 'query\tpositive\r\n"q1\tp1 "with" quotes\r\nq2"\tp2\r\n')
    run(tmp_path / "out", "--input_file", source, "--validation_split", "0")

    assert read_pairs(tmp_path / "out", "train") == [('"q1', 'p1 "with" quotes'), ('q2"', "p2")]


def test_no_header_column_indices(tmp_path):
    source = write_tsv(tmp_path / "pairs.tsv", [("id1", "p1", "q1"), ("id2", "p2", "q2")], header=None)
    stats = run(
        tmp_path / "out",
        "--input_file",
        source,
        "--no_header",
        "--input_query_col_idx",
        "2",
        "--input_positive_col_idx",
        "1",
        "--validation_split",
        "0",
        "--query_column_out",
        "anchor",
        "--positive_column_out",
        "text",
    )

    assert read_pairs(tmp_path / "out", "train", ("anchor", "text")) == [("q1", "p1"), ("q2", "p2")]
    assert stats["rows_read"] == {str(source): 2}


def test_header_names_with_byte_order_mark(tmp_path):
    text = "\ufeffid\tpassage\tquestion\n1\tp1\tq1\n2\tp2\tq2\n"
    source = write_text(tmp_path / "pairs.tsv", text)
    run(
        tmp_path / "out",
        "--input_file",
        source,
        "--input_query_column",
        "question",
        "--input_positive_column",
        "passage",
        "--validation_split",
        "0",
    )

    assert read_pairs(tmp_path / "out", "train") == [("q1", "p1"), ("q2", "p2")]


def test_csv_quoting_default_for_comma(tmp_path):
    text = 'query,positive\n"q, one","multi\r\nline ""quoted"" passage"\nq2,p2\n'
    source = write_text(tmp_path / "pairs.csv", text)
    run(tmp_path / "out", "--input_file", source, "--delimiter", ",", "--validation_split", "0")

    assert read_pairs(tmp_path / "out", "train") == [("q, one", 'multi\r\nline "quoted" passage'), ("q2", "p2")]


def test_blank_and_empty_rows_dropped(tmp_path):
    text = "query\tpositive\nq1\tp1\n\nq2\t \n\u200b\tp3\nq4\tp4\n"
    source = write_text(tmp_path / "pairs.tsv", text)
    stats = run(tmp_path / "out", "--input_file", source, "--validation_split", "0")

    assert read_pairs(tmp_path / "out", "train") == [("q1", "p1"), ("q4", "p4")]
    assert stats["rows_dropped"] == {"blank_line": 1, "empty_query": 1, "empty_positive": 1, "duplicate_pair": 0}
    assert_counts_add_up(stats)


def test_duplicates_and_overlap_counts(tmp_path):
    rows = [("q1", "p1"), ("q1", "p2"), ("q1", "p1"), ("q2", "p2"), ("q3", "p3"), ("q3", "p3")]
    source = write_tsv(tmp_path / "pairs.tsv", rows)
    stats = run(tmp_path / "out", "--input_file", source, "--validation_split", "0")

    assert read_pairs(tmp_path / "out", "train") == [("q1", "p1"), ("q1", "p2"), ("q2", "p2"), ("q3", "p3")]
    assert stats["duplicate_pairs"] == 2
    assert stats["rows_dropped"]["duplicate_pair"] == 2
    assert stats["queries_with_several_positives"] == 1
    assert stats["positives_shared_by_several_queries"] == 1
    assert_counts_add_up(stats)


def test_split_by_query_no_overlap(tmp_path):
    rows = many_pairs(queries=20, positives_per_query=3)
    source = write_tsv(tmp_path / "pairs.tsv", rows)
    stats = run(tmp_path / "out", "--input_file", source, "--validation_split", "0.25")

    train, validation = read_pairs(tmp_path / "out", "train"), read_pairs(tmp_path / "out", "validation")
    assert len({query for query, _ in validation}) == 5
    assert stats["rows_written"] == {"train": 45, "validation": 15}
    assert not {query for query, _ in train} & {query for query, _ in validation}
    assert sorted(train + validation) == sorted(rows)
    assert stats["validation_queries_in_train"] == 0


def test_split_by_row(tmp_path):
    rows = many_pairs(queries=20, positives_per_query=3)
    source = write_tsv(tmp_path / "pairs.tsv", rows)
    stats = run(tmp_path / "out", "--input_file", source, "--validation_split", "0.25", "--split_by", "row")

    train, validation = read_pairs(tmp_path / "out", "train"), read_pairs(tmp_path / "out", "validation")
    assert stats["rows_written"] == {"train": 45, "validation": 15}
    assert sorted(train + validation) == sorted(rows)
    assert stats["validation_queries_in_train"] == len({q for q, _ in train} & {q for q, _ in validation})


def test_split_seeded(tmp_path):
    source = write_tsv(tmp_path / "pairs.tsv", many_pairs())
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        run(tmp_path / name, "--input_file", source, "--validation_split", "0.25", "--seed", seed)

    assert read_pairs(tmp_path / "a", "validation") == read_pairs(tmp_path / "b", "validation")
    assert read_pairs(tmp_path / "a", "validation") != read_pairs(tmp_path / "c", "validation")


def test_validation_split_zero(tmp_path, caplog):
    source = write_tsv(tmp_path / "pairs.tsv", many_pairs(queries=3))
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    (output_dir / "validation.csv").write_text("stale", encoding="utf-8")
    stats = run(output_dir, "--input_file", source, "--validation_split", "0")

    assert not (output_dir / "validation.csv").exists()
    assert stats["rows_written"] == {"train": 9}
    assert "--validation_split 0: writing no validation file." in caplog.text
    assert json.loads((output_dir / "prepare_stats.json").read_text()) == stats


def write_beir(directory, corpus, queries, qrels):
    (directory / "qrels").mkdir(parents=True)
    write_text(directory / "corpus.jsonl", "".join(json.dumps(record) + "\n" for record in corpus))
    write_text(directory / "queries.jsonl", "".join(json.dumps(record) + "\n" for record in queries))
    lines = ["query-id\tcorpus-id\tscore"] + ["\t".join(map(str, row)) for row in qrels]
    write_text(directory / "qrels" / "train.tsv", "\n".join(lines) + "\n")
    return directory


def test_beir_pairs_and_drops(tmp_path):
    corpus = [
        {"_id": "d1", "title": "Title one", "text": "text one"},
        {"_id": "d2", "title": "", "text": "text two"},
        {"_id": "d3", "title": "", "text": ""},
    ]
    queries = [{"_id": "q1", "text": "first query"}, {"_id": "q2", "text": "second query"}]
    qrels = [("q1", "d1", 2), ("q1", "d2", 0), ("q2", "d2", 1), ("q2", "d9", 1), ("q9", "d1", 1), ("q2", "d3", 1)]
    beir_dir = write_beir(tmp_path / "beir", corpus, queries, qrels)
    stats = run(tmp_path / "out", "--beir_dir", beir_dir, "--validation_split", "0")

    assert read_pairs(tmp_path / "out", "train") == [
        ("first query", "Title one text one"),
        ("second query", "text two"),
    ]
    assert stats["rows_read"] == {str(beir_dir / "qrels" / "train.tsv"): 6}
    assert stats["rows_dropped"] == {
        "score_below_min_score": 1,
        "unknown_query_id": 1,
        "unknown_document_id": 1,
        "empty_query": 0,
        "empty_positive": 1,
        "duplicate_pair": 0,
    }
    assert_counts_add_up(stats)


def test_beir_min_score(tmp_path):
    corpus = [{"_id": f"d{i}", "title": "", "text": f"text {i}"} for i in range(4)]
    queries = [{"_id": "q1", "text": "query"}]
    beir_dir = write_beir(tmp_path / "beir", corpus, queries, [("q1", f"d{i}", i) for i in range(4)])
    stats = run(tmp_path / "out", "--beir_dir", beir_dir, "--min_score", "2", "--validation_split", "0")

    assert stats["rows_written"] == {"train": 2}
    assert stats["rows_dropped"]["score_below_min_score"] == 2


@pytest.mark.parametrize(
    ("text", "extra", "message"),
    [
        (
            "query\tpositive\nq1\tp1\nq2\tp2\textra\n",
            [],
            r"pairs.tsv, line 3: expected 2 fields separated by '\\t' \(as on line 1\), "
            r"found 3: \['q2', 'p2', 'extra'\]\. Remove the extra delimiters, or pass --quoting csv if fields are quoted\.$",
        ),
        (
            "query\tpositive\nq1\tp1\nq2 p2\n",
            [],
            r"pairs.tsv, line 3: expected 2 fields separated by '\\t' \(as on line 1\), found 1: \['q2 p2'\]\. "
            r"Add the missing delimiters \(is a '\\t' replaced by spaces\?\)\.$",
        ),
        (
            "query,positive\nq1,p1\nq2\n",
            ["--delimiter", ","],
            r"line 3: expected 2 fields separated by ',' \(as on line 1\), found 1: \['q2'\]\. "
            r"Add the missing delimiters \(is a ',' replaced by spaces\?\), or check the quoting\.$",
        ),
        (
            "query\tpositive\nq1\tp1\n",
            ["--min_score", "2"],
            r"^--min_score 2 has no effect with --input_file; remove it\.$",
        ),
        (
            "query\tpositive\nq1\tp1\n",
            ["--qrels_split", "test", "--min_score", "0"],
            r"^--qrels_split 'test', --min_score 0 have no effect with --input_file; remove them\.$",
        ),
        ('query,positive\nq1,p1\n"q2,p2\nq3,p3\n', ["--delimiter", ","], r"pairs.tsv, line 3: unclosed quote"),
        (
            "query \tpositive\nq1\tp1\nq2\tp2\n",
            ["--input_query_column", "query"],
            r"column 'query' \(--input_query_column\) not found; the header has 'query ', 'positive'",
        ),
        (
            "query\tpositive\nq1\tp1\nq2\tp2\n",
            ["--input_positive_col_idx", "5"],
            r"--input_positive_col_idx 5 is out of range: .*pairs.tsv, line 1 has 2 field\(s\) \['query', 'positive'\]",
        ),
        ("query\tpositive\nq1\tp1\n", [], r"Only 1 usable pair\(s\)"),
        ("query\tpositive\nq1\tp1\nq1\tp1\n", [], r"Only 1 usable pair\(s\) .*'duplicate_pair': 1"),
        ("query\tpositive\n", [], r"Only 0 usable pair\(s\)"),
        ("", [], r"is empty"),
        (
            "query\tpositive\nq1\tp1\nq2\tp2\n",
            ["--validation_split", "0.2"],
            r"--validation_split 0.2 of 2 queries leaves 0 validation queries",
        ),
        ("query\tpositive\nq1\tp1\nq2\tp2\n", ["--validation_split", "-0.1"], r"not a fraction in \[0, 1\)"),
        ("query\tpositive\nq1\tp1\n", ["--input_query_col_idx", "1"], r"are both 1; the query and the positive"),
        ("query\tpositive\nq1\tp1\n", ["--no_header", "--input_query_column", "query"], r"--no_header is set"),
        ("query\tpositive\nq1\tp1\n", ["--delimiter", "::"], r"--delimiter '::' must be a single character"),
        ("query\tpositive\nq1\tp1\n", ["--query_column_out", "positive"], r"both 'positive'"),
    ],
)
def test_bad_input_writes_nothing(tmp_path, text, extra, message):
    source = write_text(tmp_path / "pairs.tsv", text)
    output_dir = tmp_path / "out"

    with pytest.raises(ValueError, match=message):
        run(output_dir, "--input_file", source, *extra)
    assert not output_dir.exists()


def test_decoding_error_names_offset(tmp_path):
    source = tmp_path / "pairs.tsv"
    source.write_bytes(b"query\tpositive\nq1\tp1\nq2\tp\xe92\n")

    with pytest.raises(ValueError, match=r"b'\\xe9' at byte offset 25 \(line 3\).*--encoding"):
        run(tmp_path / "out", "--input_file", source)
    assert not (tmp_path / "out").exists()

    stats = run(tmp_path / "out", "--input_file", source, "--encoding", "latin-1", "--validation_split", "0")
    assert stats["rows_written"] == {"train": 2}


def test_missing_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--input_file '.*missing.tsv' not found"):
        run(tmp_path / "out", "--input_file", tmp_path / "missing.tsv")
    with pytest.raises(FileNotFoundError, match=r"corpus.jsonl not found"):
        run(tmp_path / "out", "--beir_dir", tmp_path)
    with pytest.raises(ValueError, match=r"Give exactly one input"):
        run(tmp_path / "out")
    with pytest.raises(ValueError, match=r"Give exactly one input"):
        run(tmp_path / "out", "--input_file", "a.tsv", "--beir_dir", tmp_path)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--delimiter", ","], r"^--delimiter ',' has no effect with --beir_dir; remove it\.$"),
        (["--no_header"], r"^--no_header has no effect with --beir_dir; remove it\.$"),
        (
            ["--quoting", "csv", "--input_query_col_idx", "2", "--encoding", "latin-1"],
            r"^--input_query_col_idx 2, --quoting 'csv', --encoding 'latin-1' have no effect with --beir_dir; "
            r"remove them\.$",
        ),
    ],
)
def test_beir_rejects_delimited_flags(tmp_path, extra, message):
    beir_dir = write_beir(tmp_path / "beir", [{"_id": "d", "title": "", "text": "t"}], [{"_id": "q", "text": "q"}], [])
    with pytest.raises(ValueError, match=message):
        run(tmp_path / "out", "--beir_dir", beir_dir, *extra)
    assert not (tmp_path / "out").exists()


def test_help_header_reads_for_both_flags(capsys):
    with pytest.raises(SystemExit):
        prepare_contrastive_data.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert help_text.count("Default: yes; --no_header reads the first row as a pair.") == 2
    assert "Default: tab. --header" in help_text
    assert "(default: )" not in help_text
    assert "(default: True)" not in help_text


def test_output_dir_equal_to_input(tmp_path):
    beir_dir = write_beir(tmp_path / "beir", [{"_id": "d", "title": "", "text": "t"}], [{"_id": "q", "text": "q"}], [])
    source = write_tsv(tmp_path / "train.csv", many_pairs(queries=2))

    with pytest.raises(ValueError, match=r"--output_dir '.*beir' is also an input path"):
        run(beir_dir, "--beir_dir", beir_dir)
    with pytest.raises(ValueError, match=r"would be overwritten by the output 'train.csv'"):
        run(tmp_path, "--input_file", source)
    assert sorted(path.name for path in beir_dir.iterdir()) == ["corpus.jsonl", "qrels", "queries.jsonl"]


def test_output_dir_is_file(tmp_path):
    source = write_tsv(tmp_path / "pairs.tsv", many_pairs(queries=2))
    plain_file = write_text(tmp_path / "plainfile", "x")

    with pytest.raises(ValueError, match=r"^--output_dir '.*plainfile' is a file, not a directory; choose another"):
        run(plain_file, "--input_file", source)


def test_help_on_every_field():
    for arguments in (prepare_contrastive_data.InputArguments, prepare_contrastive_data.OutputArguments):
        for field in arguments.__dataclass_fields__.values():
            assert field.metadata.get("help"), field.name


def test_cranfield_qrels(cranfield_dir, tmp_path):
    stats = run(tmp_path / "out", "--beir_dir", cranfield_dir, "--qrels_split", "train", "--validation_split", "0.1")

    # The pair count that the qrels imply, read here with the csv module alone.
    queries, corpus = load_queries(cranfield_dir / "queries.jsonl"), load_corpus(cranfield_dir / "corpus.jsonl")
    with open(cranfield_dir / "qrels" / "train.tsv", newline="", encoding="utf-8") as handle:
        judgements = list(csv.DictReader(handle, delimiter="\t"))
    expected = {
        (queries[row["query-id"]], corpus[row["corpus-id"]])
        for row in judgements
        if int(row["score"]) >= 1 and row["query-id"] in queries and corpus.get(row["corpus-id"], "").strip()
    }
    train, validation = read_pairs(tmp_path / "out", "train"), read_pairs(tmp_path / "out", "validation")
    assert len(train) + len(validation) == len(expected)
    assert set(train) | set(validation) == expected
    assert stats["rows_read"] == {str(cranfield_dir / "qrels" / "train.tsv"): len(judgements)}
    assert not {query for query, _ in train} & {query for query, _ in validation}
    assert len({query for query, _ in validation}) == len({query for query, _ in expected}) // 10
    assert_counts_add_up(stats)
