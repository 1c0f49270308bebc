"""Tests of run_pipeline.sh: settings checks, a broken stage, end to end, and resume after a kill.

The end-to-end runs take a few minutes on a CPU (five Python processes, each importing torch), so
they are slow tests: `pytest -m slow tests/test_pipeline.py`.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PIPELINE = REPO_ROOT / "run_pipeline.sh"
QUICKSTART = REPO_ROOT / "examples" / "quickstart.sh"

# Smaller than the quick start's defaults: a 32-wide BERT and few epochs. MLM saves a checkpoint
# every 4 steps so that a run can be killed between two of them.
TINY_SETTINGS = {
    "CONFIG_OVERRIDES": "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64,max_position_embeddings=128",
    "TOKENIZER_VOCAB_SIZE": "600",
    "MLM_EPOCHS": "3",
    "MLM_SAVE_STEPS": "4",
    "CONTRASTIVE_EPOCHS": "2",
    "CONTRASTIVE_SAVE_STEPS": "10",
    "EVAL_BATCH_SIZE": "128",
}


def pipeline_env(output_dir: Path, **settings: str) -> dict[str, str]:
    """Return the environment for a pipeline run into `output_dir` with this venv's Python and accelerate."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(PYTHON=sys.executable, OUTPUT_DIR=str(output_dir), **TINY_SETTINGS)
    env.update(settings)
    return env


def run_script(script: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(script), *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900
    )


def report_metrics(output_dir: Path) -> dict[str, dict[str, float]]:
    report = json.loads((output_dir / "report" / "report.json").read_text())
    return {result["name"]: result for result in report["results"]}


def output_files(output_dir: Path) -> set[str]:
    """List the files of a run, leaving out checkpoints, whose names depend on where a run stopped."""
    return {
        str(path.relative_to(output_dir))
        for path in output_dir.rglob("*")
        if path.is_file() and "checkpoint" not in str(path.relative_to(output_dir))
    }


def test_help_lists_settings(tmp_path):
    result = run_script(PIPELINE, pipeline_env(tmp_path), "--help")
    assert result.returncode == 0
    for line in ("BASE_MODEL", "default: 'bert-base-uncased'", "PREFIX_QUERY", "default: 'query: '", "ABLATE_MLM"):
        assert line in result.stdout


def test_contradictory_flags_rejected(tmp_path):
    env = pipeline_env(tmp_path, SKIP_MLM="1", ABLATE_MLM="1", BEIR_DIR=str(tmp_path))
    result = run_script(PIPELINE, env)
    assert result.returncode == 1
    assert "SKIP_MLM=1 and ABLATE_MLM=1 contradict each other" in result.stderr


def test_missing_input_stops_at_stage(tmp_path):
    output_dir = tmp_path / "out"
    env = pipeline_env(output_dir, MLM_INPUT_FILES=str(tmp_path / "missing.txt"))
    result = run_script(QUICKSTART, env)
    assert result.returncode != 0
    assert "stage 'prepare_mlm' failed" in result.stderr
    assert "==== command:" in result.stdout
    assert ": mlm\n" not in result.stdout
    assert not (output_dir / ".done" / "prepare_mlm").exists()
    assert not (output_dir / "mlm").exists()


def test_incomplete_mlm_model_rejected(tmp_path):
    output_dir = tmp_path / "out"
    done_dir = output_dir / ".done"
    done_dir.mkdir(parents=True)
    (done_dir / "prepare_mlm").touch()
    time.sleep(0.05)
    (done_dir / "mlm").touch()
    model_dir = output_dir / "mlm" / "sentence-transformer-format"
    model_dir.mkdir(parents=True)
    (model_dir / "model.safetensors").write_bytes(b"")
    result = run_script(QUICKSTART, pipeline_env(output_dir))
    assert result.returncode == 1
    assert "sentence-transformer-format has no modules.json" in result.stderr
    assert "mlm: already finished" in result.stdout
    assert not (output_dir / "contrastive").exists()


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One uninterrupted quick-start run with tiny settings."""
    output_dir = tmp_path_factory.mktemp("clean") / "out"
    result = run_script(QUICKSTART, pipeline_env(output_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir, result


@pytest.mark.slow
def test_quickstart_end_to_end(clean_run):
    output_dir, result = clean_run
    for stage in ("prepare_mlm", "mlm", "prepare_contrastive", "contrastive", "report"):
        assert (output_dir / ".done" / stage).is_file(), stage
    assert (output_dir / "mlm" / "sentence-transformer-format" / "modules.json").is_file()
    assert (output_dir / "contrastive" / "modules.json").is_file()
    assert (output_dir / "contrastive" / "eval_results.json").is_file()
    metrics = report_metrics(output_dir)
    assert list(metrics) == ["bm25", "mlm", "final"]
    for name in metrics:
        assert 0 < metrics[name]["recall@100"] <= 1
    assert "| final |" in (output_dir / "report" / "report.md").read_text()
    assert f"final model:  {output_dir / 'contrastive'}" in result.stdout


@pytest.mark.slow
def test_rerun_skips_finished_stages(clean_run):
    output_dir, _ = clean_run
    report_before = (output_dir / "report" / "report.json").read_text()
    result = run_script(QUICKSTART, pipeline_env(output_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    for stage in ("prepare_mlm", "mlm", "prepare_contrastive", "contrastive", "report"):
        assert f"==== {stage}: already finished" in result.stdout
    assert "==== command:" not in result.stdout
    assert (output_dir / "report" / "report.json").read_text() == report_before


def wait_for_checkpoint(output_dir: Path, process: subprocess.Popen, timeout: float) -> None:
    """Wait until the MLM stage has saved a complete checkpoint."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        checkpoints = sorted((output_dir / "mlm").glob("checkpoint-*/trainer_state.json"))
        if checkpoints:
            return
        if process.poll() is not None:
            pytest.fail(f"the pipeline ended (status {process.returncode}) before the first MLM checkpoint")
        time.sleep(0.2)
    pytest.fail(f"no MLM checkpoint within {timeout} s")


@pytest.mark.slow
def test_killed_mlm_resumes(tiny_bert_dir, tmp_path):
    # A fixed tokenizer, because WordPiece training in the `tokenizers` library can number the
    # continuation pieces differently from run to run, and that alone moves the metrics.
    fixed_tokenizer = {"TOKENIZER_VOCAB_SIZE": "", "MLM_EXTRA_ARGS": f"--tokenizer_name {tiny_bert_dir}"}
    clean_dir = tmp_path / "clean"
    clean_result = run_script(QUICKSTART, pipeline_env(clean_dir, **fixed_tokenizer))
    assert clean_result.returncode == 0, clean_result.stderr[-3000:]

    output_dir = tmp_path / "out"
    env = pipeline_env(output_dir, **fixed_tokenizer)
    log_path = tmp_path / "killed.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            ["bash", str(QUICKSTART)], env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_for_checkpoint(output_dir, process, timeout=600)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert not (output_dir / ".done" / "mlm").exists()
    assert not (output_dir / "contrastive").exists()

    result = run_script(QUICKSTART, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "==== prepare_mlm: already finished" in result.stdout
    assert "==== mlm: resuming the interrupted run" in result.stdout
    assert f"Resuming training from {output_dir / 'mlm'}/checkpoint-" in result.stdout + result.stderr
    assert output_files(output_dir) == output_files(clean_dir)
    # The resumed run takes the same number of optimizer steps; restored RNG states keep its
    # losses close to the clean run's, though not bit for bit.
    resumed_state = json.loads((output_dir / "mlm" / "trainer_state.json").read_text())
    clean_state = json.loads((clean_dir / "mlm" / "trainer_state.json").read_text())
    assert resumed_state["global_step"] == clean_state["global_step"]
    resumed_loss = json.loads((output_dir / "mlm" / "all_results.json").read_text())["eval_loss"]
    clean_loss = json.loads((clean_dir / "mlm" / "all_results.json").read_text())["eval_loss"]
    assert resumed_loss == pytest.approx(clean_loss, rel=0.02)
    # 0.06 is two of the 39 validation queries for MRR@10 and Recall@100.
    resumed, clean = report_metrics(output_dir), report_metrics(clean_dir)
    for name in ("bm25", "mlm", "final"):
        for metric in ("ndcg@10", "mrr@10", "recall@100"):
            assert resumed[name][metric] == pytest.approx(clean[name][metric], abs=0.06), (name, metric)


def write_example_beir_folder(folder: Path) -> None:
    """Turn the example data into a BEIR folder: every passage a document, queries split by parity into train and test."""
    passages = (REPO_ROOT / "examples" / "corpus.txt").read_text().splitlines()
    document_ids = {passage: f"doc{index}" for index, passage in enumerate(passages)}
    query_ids: dict[str, str] = {}
    qrels = {"train": ["query-id\tcorpus-id\tscore"], "test": ["query-id\tcorpus-id\tscore"]}
    for line in (REPO_ROOT / "examples" / "pairs.tsv").read_text().splitlines()[1:]:
        query, passage = line.split("\t")
        query_id = query_ids.setdefault(query, f"q{len(query_ids)}")
        split = "test" if int(query_id[1:]) % 4 == 0 else "train"
        qrels[split].append(f"{query_id}\t{document_ids[passage]}\t1")
    (folder / "qrels").mkdir(parents=True)
    with open(folder / "corpus.jsonl", "w") as handle:
        for passage, document_id in document_ids.items():
            handle.write(json.dumps({"_id": document_id, "title": "", "text": passage}) + "\n")
    with open(folder / "queries.jsonl", "w") as handle:
        for query, query_id in query_ids.items():
            handle.write(json.dumps({"_id": query_id, "text": query}) + "\n")
    for split, lines in qrels.items():
        (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_beir_dir_with_ablation(tiny_bert_dir, tmp_path):
    beir_dir = tmp_path / "beir"
    write_example_beir_folder(beir_dir)
    output_dir = tmp_path / "out"
    env = pipeline_env(
        output_dir, BEIR_DIR=str(beir_dir), BASE_MODEL=str(tiny_bert_dir), ABLATE_MLM="1",
        MLM_EPOCHS="1", MLM_MAX_SEQ_LENGTH="64", CONTRASTIVE_EPOCHS="1", CONTRASTIVE_BATCH_SIZE="16",
        CONTRASTIVE_MAX_SEQ_LENGTH="64",
    )
    result = run_script(PIPELINE, env)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = report_metrics(output_dir)
    assert list(metrics) == ["bm25", "base", "mlm", "final", "final_no_mlm"]
    report = json.loads((output_dir / "report" / "report.json").read_text())
    assert report["data"]["source"] == "beir"
    assert report["passages"] == 552
    assert f"no-MLM model: {output_dir / 'contrastive-no-mlm'}" in result.stdout
