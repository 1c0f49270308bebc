"""Tests of the ranking metrics, the prefix helper and evaluate_retrieval.py."""

import json
import math

import pytest

import evaluate_retrieval
from e5_pipeline.csv_io import write_csv
from e5_pipeline.retrieval_metrics import evaluate_rankings, mrr_at_k, ndcg_at_k, recall_at_k


def test_ndcg_graded_gains():
    relevance = {"a": 2, "b": 1}
    # Ranking b, x, a: gains 1 and 3 at ranks 1 and 3; the ideal ranking a, b gives 3 then 1.
    dcg = 1 / math.log2(2) + 3 / math.log2(4)
    ideal = 3 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k(["b", "x", "a"], relevance, 10) == pytest.approx(dcg / ideal)
    assert ndcg_at_k(["a", "b"], relevance, 10) == pytest.approx(1.0)


def test_ndcg_cutoff_and_ideal_depth():
    relevance = {"a": 1, "b": 1, "c": 1}
    # With k=2 the ideal ranking holds only two of the three relevant documents.
    assert ndcg_at_k(["x", "a", "b"], relevance, 2) == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert ndcg_at_k(["x", "y", "a"], relevance, 2) == 0.0


def test_mrr_first_relevant_rank():
    assert mrr_at_k(["x", "y", "a", "b"], {"a": 1, "b": 3}, 10) == pytest.approx(1 / 3)
    assert mrr_at_k(["x", "y", "a"], {"a": 1}, 2) == 0.0
    # A judged score of 0 is not relevant.
    assert mrr_at_k(["z", "a"], {"z": 0, "a": 1}, 10) == pytest.approx(1 / 2)


def test_recall_fraction_found():
    assert recall_at_k(["a", "x", "c"], {"a": 1, "b": 2, "c": 4, "z": 0}, 100) == pytest.approx(2 / 3)
    assert recall_at_k(["a", "x", "c"], {"a": 1, "b": 2, "c": 4}, 1) == pytest.approx(1 / 3)


def test_evaluate_rankings_mean_and_missing_query():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    metrics = evaluate_rankings({"q1": ["x", "a"]}, qrels)
    assert metrics["mrr@10"] == pytest.approx(0.25)
    assert metrics["recall@100"] == pytest.approx(0.5)
    assert metrics["ndcg@10"] == pytest.approx(0.5 / math.log2(3))


def test_evaluate_rankings_empty_qrels():
    with pytest.raises(ValueError, match="No query has relevance judgements"):
        evaluate_rankings({}, {})


def test_model_specs_parsing():
    assert evaluate_retrieval.parse_model_specs(["base=m1", "dir/m2"]) == [("base", "m1"), ("dir/m2", "dir/m2")]
    with pytest.raises(ValueError, match="'base' is used twice"):
        evaluate_retrieval.parse_model_specs(["base=m1", "base=m2"])
    with pytest.raises(ValueError, match="entry '=m1' is invalid"):
        evaluate_retrieval.parse_model_specs(["=m1"])


# A small BEIR folder where BM25 ranks every relevant document first.
CORPUS = {
    "d1": ("Shock waves", "A shock wave forms ahead of a blunt body in supersonic flow."),
    "d2": ("Boundary layers", "The boundary layer thickens along a flat plate as the Reynolds number grows."),
    "d3": ("Wing flutter", "Flutter couples the bending and torsion of a wing at high speed."),
    "d4": ("Heat transfer", "Heat transfer to a hypersonic nose cone depends on the wall temperature."),
}
QUERIES = {"q1": "supersonic shock wave ahead of a blunt body", "q2": "flutter of a wing in bending and torsion"}


@pytest.fixture()
def beir_dir(tmp_path):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    with open(folder / "corpus.jsonl", "w") as handle:
        for document_id, (title, text) in CORPUS.items():
            handle.write(json.dumps({"_id": document_id, "title": title, "text": text}) + "\n")
    with open(folder / "queries.jsonl", "w") as handle:
        for query_id, text in QUERIES.items():
            handle.write(json.dumps({"_id": query_id, "text": text}) + "\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq2\td3\t1\n")
    return folder


def test_beir_report_files(beir_dir, tiny_sentence_transformer_dir, tmp_path):
    output_dir = tmp_path / "report"
    report = evaluate_retrieval.main([
        "--beir_dir", str(beir_dir), "--models", f"tiny={tiny_sentence_transformer_dir}",
        "--prefix_query", "query: ", "--prefix_passage", "passage: ", "--output_dir", str(output_dir),
    ])
    assert json.loads((output_dir / "report.json").read_text()) == report
    assert report["queries"] == 2
    assert report["passages"] == 4
    assert [result["name"] for result in report["results"]] == ["bm25", "tiny"]
    bm25 = report["results"][0]
    assert bm25["ndcg@10"] == pytest.approx(1.0)
    assert bm25["mrr@10"] == pytest.approx(1.0)
    assert bm25["recall@100"] == pytest.approx(1.0)
    # Four passages, so every ranking of depth 100 contains the relevant one.
    assert report["results"][1]["recall@100"] == pytest.approx(1.0)
    markdown = (output_dir / "report.md").read_text()
    assert "| bm25 | `bm25` | 1.000 | 1.000 | 1.000 |" in markdown
    assert "2 queries searched over 4 passages" in markdown


def test_pairs_with_corpus_file(tmp_path):
    validation = tmp_path / "validation.csv"
    write_csv(validation, ["query", "positive"], [
        ["supersonic shock wave", "A shock wave forms ahead of a blunt body in supersonic flow."],
        ["shock ahead of blunt body", "A shock wave forms ahead of a blunt body in supersonic flow."],
        ["wing flutter torsion", "Flutter couples the bending and torsion of a wing."],
        ["wing flutter torsion", "Torsion flutter limits the speed of thin wings."],
        ["", "An empty query is dropped."],
    ])
    corpus_file = tmp_path / "passages.txt"
    corpus_file.write_text("Flutter couples the bending and torsion of a wing.\n\nHeat reaches the nose cone.\n")
    report = evaluate_retrieval.main([
        "--validation_file", str(validation), "--corpus_file", str(corpus_file), "--output_dir", str(tmp_path / "out"),
    ])
    assert report["queries"] == 3
    assert report["passages"] == 4
    assert report["data"]["rows_read"] == 5
    assert report["data"]["rows_dropped_empty"] == 1
    assert report["data"]["judgements"] == 4
    assert report["data"]["positives"] == 3
    assert report["data"]["corpus_file_passages"] == 2
    assert report["data"]["distractors"] == 1
    assert report["results"][0]["recall@100"] == pytest.approx(1.0)


def test_csv_corpus_missing_column(tmp_path):
    validation = tmp_path / "validation.csv"
    write_csv(validation, ["query", "positive"], [["q", "p"]])
    corpus_file = tmp_path / "corpus.csv"
    write_csv(corpus_file, ["passage"], [["p2"]])
    with pytest.raises(ValueError, match=r"corpus.csv \(corpus file\) has no column 'text'; its header has 'passage'"):
        evaluate_retrieval.main([
            "--validation_file", str(validation), "--corpus_file", str(corpus_file), "--output_dir", str(tmp_path / "out"),
        ])


def test_data_source_required(tmp_path):
    with pytest.raises(ValueError, match="Give exactly one data source"):
        evaluate_retrieval.main(["--output_dir", str(tmp_path)])


def test_missing_validation_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="--validation_file '.*nope.csv' not found"):
        evaluate_retrieval.main(["--validation_file", str(tmp_path / "nope.csv"), "--output_dir", str(tmp_path)])


@pytest.mark.slow
def test_cranfield_reference_figures(cranfield_dir, minilm_dir, tmp_path):
    report = evaluate_retrieval.main([
        "--beir_dir", str(cranfield_dir), "--qrels_split", "test", "--models", f"minilm={minilm_dir}",
        "--output_dir", str(tmp_path),
    ])
    results = {result["name"]: result for result in report["results"]}
    assert report["queries"] == 56
    assert report["passages"] == 1400
    for name, expected in (("bm25", (0.311, 0.481, 0.736)), ("minilm", (0.335, 0.599, 0.793))):
        measured = tuple(results[name][metric] for metric in ("ndcg@10", "mrr@10", "recall@100"))
        assert measured == pytest.approx(expected, abs=0.005), name


def test_pairs_wrong_column_names_flag(tmp_path):
    validation = tmp_path / "validation.csv"
    write_csv(validation, ["question", "positive"], [["q", "p"]])
    with pytest.raises(
        ValueError, match=r"has no column 'query'; its header has 'question', 'positive'\. Pass the right column name "
        r"with --query_column, or prepare"
    ):
        evaluate_retrieval.main(["--validation_file", str(validation), "--output_dir", str(tmp_path / "out")])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batch_size", "0"], r"--batch_size must be positive, got 0\."),
        (["--max_seq_length", "-1"], r"--max_seq_length must be positive, got -1\."),
        (["--device", "gpu"], r"--device 'gpu' is not a torch device; use e\.g\. cpu, cuda or cuda:1\."),
        (["--query_column", "question"], r"--query_column 'question' has no effect with --beir_dir; remove it\."),
        (
            ["--positive_column", "p", "--corpus_text_column", "t"],
            r"--positive_column 'p', --corpus_text_column 't' have no effect with --beir_dir; remove them\.",
        ),
    ],
)
def test_checks_before_loading(beir_dir, tmp_path, monkeypatch, extra, message):
    # The check must come before the data is read, so a loader that fails proves the order.
    monkeypatch.setattr(evaluate_retrieval, "load_beir_data", lambda *args: pytest.fail("data loaded before the check"))
    with pytest.raises(ValueError, match=message):
        evaluate_retrieval.main(["--beir_dir", str(beir_dir), "--output_dir", str(tmp_path / "out"), *extra])


def test_qrels_split_with_pairs(tmp_path):
    validation = tmp_path / "validation.csv"
    write_csv(validation, ["query", "positive"], [["q", "p"]])
    args = ["--validation_file", str(validation), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match=r"--qrels_split 'train' has no effect with --validation_file; remove it\."):
        evaluate_retrieval.main(args + ["--qrels_split", "train"])


def test_device_cuda_without_cuda(beir_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate_retrieval.torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"--device 'cuda': CUDA is not available on this machine; pass --device cpu"):
        evaluate_retrieval.main(["--beir_dir", str(beir_dir), "--device", "cuda", "--output_dir", str(tmp_path / "out")])


def test_help_bm25_reads_for_both_flags(capsys):
    with pytest.raises(SystemExit):
        evaluate_retrieval.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert help_text.count("Default: on; --no_bm25 turns it off.") == 2
    assert "Also score BM25" not in help_text
    assert "(default: False)" not in help_text
