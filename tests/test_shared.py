"""Tests of the shared package: the CSV convention, BEIR reading and model building."""

import pytest
from sentence_transformers import SentenceTransformer

from e5_pipeline.beir import load_corpus, load_qrels, load_queries, passage_text
from e5_pipeline.csv_io import load_csv_dataset, write_csv
from e5_pipeline.models import check_local_model_path, load_sentence_transformer

TRICKY_TEXTS = ["NA", "null", "nan", "None", "N/A", "a,b", 'say "hi"', "tab\there", "007", "  spaced  ", "multi\nline"]


def test_csv_round_trip_keeps_exact_strings(tmp_path):
    path = tmp_path / "train.csv"
    written = write_csv(path, ["text", "id"], [[text, str(index)] for index, text in enumerate(TRICKY_TEXTS)])
    dataset = load_csv_dataset({"train": str(path)}, ["text"])["train"]
    assert written == len(TRICKY_TEXTS)
    assert dataset["text"] == TRICKY_TEXTS
    assert dataset["id"] == [str(index) for index in range(len(TRICKY_TEXTS))]


def test_csv_missing_column_lists_found(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('\ufeff"text "\n"a"\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"has no column 'query'; its header has 'text '"):
        load_csv_dataset({"train": str(path)}, ["query"])


def test_beir_readers(tmp_path):
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "title": "T", "text": "body"}\n{"_id": "d2", "title": "", "text": "x"}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "what"}\n')
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\n")
    assert load_corpus(tmp_path / "corpus.jsonl") == {"d1": "T body", "d2": "x"}
    assert load_queries(tmp_path / "queries.jsonl") == {"q1": "what"}
    assert load_qrels(tmp_path / "qrels.tsv") == {"q1": {"d1": 2, "d2": 0}}
    assert passage_text({"title": None, "text": " y "}) == "y"


def test_beir_invalid_json_names_line(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"_id": "d1", "text": "ok"}\n{"_id": "d2", \n')
    with pytest.raises(ValueError, match=r"corpus.jsonl, line 2: invalid JSON"):
        load_corpus(path)


def test_plain_transformers_folder_is_wrapped(tiny_bert_dir, caplog):
    model = load_sentence_transformer(str(tiny_bert_dir), max_seq_length=32, device="cpu")
    assert isinstance(model, SentenceTransformer)
    assert model.max_seq_length == 32
    assert "not a sentence-transformers folder" in caplog.text


def test_missing_model_folder_rejected(tmp_path):
    missing = tmp_path / "nomodel"
    with pytest.raises(FileNotFoundError, match=rf"^model folder '{missing}' not found\. Pass an existing local folder"):
        load_sentence_transformer(str(missing), device="cpu")
    with pytest.raises(FileNotFoundError, match=r"^--model: model folder '\./nomodel' not found"):
        check_local_model_path("./nomodel", "--model")


def test_local_path_check_cases(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models" / "mlm").mkdir(parents=True)
    assert check_local_model_path("~/models/mlm") == str(tmp_path / "models" / "mlm")
    assert check_local_model_path(str(tmp_path)) == str(tmp_path)
    # Hub names pass unchecked, even when no such folder exists here.
    assert check_local_model_path("bert-base-uncased") == "bert-base-uncased"
    assert check_local_model_path("intfloat/e5-base-v2") == "intfloat/e5-base-v2"


def test_sentence_transformer_folder_loads(tiny_sentence_transformer_dir):
    model = load_sentence_transformer(str(tiny_sentence_transformer_dir), device="cpu")
    assert model.encode(["boundary layer"]).shape == (1, 32)


def test_script_input_error_exits_cleanly(tmp_path):
    import subprocess
    import sys

    from conftest import REPO_ROOT

    missing = tmp_path / "missing.tsv"
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "prepare_contrastive_data.py"), "--input_file", str(missing), "--output_dir", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 1
    assert f"ERROR - __main__ - --input_file '{missing}' not found." in completed.stderr
    assert "Traceback" not in completed.stderr
    assert not (tmp_path / "out").exists()
