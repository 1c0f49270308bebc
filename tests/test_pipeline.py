"""Tests of run_pipeline.sh: settings checks, a broken stage, end to end, and resume after a kill.

The fast tests set PYTHON=false or a stand-in script, so that no stage trains, and check which
stages a run skips, reruns or rejects: a foreign OUTPUT_DIR, changed settings or inputs, Ctrl-C.

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
    assert "MLM_HEAD_LEARNING_RATE" in result.stdout
    assert "Contrastive peak learning rate\n" + " " * 31 + "default: '2e-4'" in result.stdout


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


def own_files_env(tmp_path: Path, output_dir: Path, **settings: str) -> dict[str, str]:
    """Return an environment for own files copied under `tmp_path`, with PYTHON=false so any stage that starts fails at once.

    The copies are dated 1000 s in the past, so markers written by a test are newer than them.
    """
    inputs_dir = tmp_path / "inputs"
    (inputs_dir / "texts").mkdir(parents=True, exist_ok=True)
    for name in ("pairs.tsv", "corpus.txt"):
        (inputs_dir / name).write_text((REPO_ROOT / "examples" / name).read_text())
    (inputs_dir / "texts" / "a.txt").write_text("first text\n")
    past = time.time() - 1000
    for path in [*inputs_dir.rglob("*"), inputs_dir]:
        os.utime(path, (past, past))
    env = pipeline_env(
        output_dir, PYTHON="false", MODEL_TYPE="", BASE_MODEL=str(tmp_path / "base"),
        MLM_INPUT_FILES=str(inputs_dir / "texts" / "*.txt"), PAIRS_FILE=str(inputs_dir / "pairs.tsv"),
        EVAL_CORPUS_FILE=str(inputs_dir / "corpus.txt"),
    )
    env.update(settings)
    return env


def mark_done(output_dir: Path, *stages: str) -> None:
    """Write the done-markers of `stages`, in order, as a finished run would."""
    (output_dir / ".done").mkdir(parents=True, exist_ok=True)
    for stage in stages:
        (output_dir / ".done" / stage).touch()


def test_output_dir_with_user_files_rejected(tmp_path):
    output_dir = tmp_path / "mine"
    (output_dir / "report").mkdir(parents=True)
    (output_dir / "report" / "notes.txt").write_text("keep me\n")
    result = run_script(PIPELINE, own_files_env(tmp_path, output_dir, SKIP_MLM="1"))
    assert result.returncode == 1
    assert f"OUTPUT_DIR='{output_dir}' is not empty and has no .done folder" in result.stderr
    assert "Choose a new or empty folder." in result.stderr
    assert (output_dir / "report" / "notes.txt").read_text() == "keep me\n"
    assert not (output_dir / ".done").exists()


def test_empty_output_dir_accepted(tmp_path):
    output_dir = tmp_path / "empty"
    output_dir.mkdir()
    result = run_script(PIPELINE, own_files_env(tmp_path, output_dir, SKIP_MLM="1"))
    assert "stage 'prepare_contrastive' failed" in result.stderr
    assert (output_dir / ".done" / "settings").is_file()


def test_fresh_stage_logs_removal(tmp_path):
    output_dir = tmp_path / "out"
    (output_dir / ".done").mkdir(parents=True)
    (output_dir / "data" / "contrastive").mkdir(parents=True)
    (output_dir / "data" / "contrastive" / "train.csv").write_text("query,positive\n")
    result = run_script(PIPELINE, own_files_env(tmp_path, output_dir, SKIP_MLM="1"))
    assert f"==== prepare_contrastive: removing {output_dir / 'data' / 'contrastive'}" in result.stdout
    assert not (output_dir / "data" / "contrastive").exists()


@pytest.mark.parametrize("name", ["OUTPUT_DIR", "PYTHON", "MLM_EPOCHS"])
def test_empty_setting_rejected(tmp_path, name):
    result = run_script(PIPELINE, own_files_env(tmp_path, tmp_path / "out", **{name: ""}))
    assert result.returncode == 1
    assert f"error: {name} is empty" in result.stderr
    assert not (tmp_path / "out").exists()


def test_settings_file_contents(tmp_path):
    output_dir = tmp_path / "out"
    run_script(PIPELINE, own_files_env(tmp_path, output_dir, SKIP_MLM="1", PREFIX_QUERY="q: "))
    lines = (output_dir / ".done" / "settings").read_text().splitlines()
    assert "PREFIX_QUERY=q: " in lines
    assert "CONTRASTIVE_EPOCHS=2" in lines
    recorded_names = {line.split("=", 1)[0] for line in lines}
    for name in ("OUTPUT_DIR", "FORCE", "PYTHON", "ACCELERATE_ARGS", "EVAL_BATCH_SIZE", "SKIP_MLM", "ABLATE_MLM"):
        assert name not in recorded_names


def test_changed_settings_rejected(tmp_path):
    output_dir = tmp_path / "out"
    first = run_script(PIPELINE, own_files_env(tmp_path, output_dir, SKIP_MLM="1"))
    assert "stage 'prepare_contrastive' failed" in first.stderr
    other_pairs = tmp_path / "other.tsv"
    other_pairs.write_text((tmp_path / "inputs" / "pairs.tsv").read_text())
    changed = {"PREFIX_QUERY": "q: ", "CONTRASTIVE_EPOCHS": "5", "PAIRS_FILE": str(other_pairs)}
    result = run_script(PIPELINE, own_files_env(tmp_path, output_dir, SKIP_MLM="1", **changed))
    assert result.returncode == 1
    assert "settings differ from the ones recorded" in result.stderr
    assert "  PREFIX_QUERY: 'query: ' -> 'q: '" in result.stderr
    assert "  CONTRASTIVE_EPOCHS: '2' -> '5'" in result.stderr
    assert f"  PAIRS_FILE: '{tmp_path / 'inputs' / 'pairs.tsv'}' -> '{other_pairs}'" in result.stderr
    assert "FORCE=1" in result.stderr
    assert "==== command:" not in result.stdout

    forced = run_script(PIPELINE, own_files_env(tmp_path, output_dir, SKIP_MLM="1", FORCE="1", **changed))
    assert f"==== FORCE=1: removing {output_dir / '.done'}" in forced.stdout
    assert "stage 'prepare_contrastive' failed" in forced.stderr
    assert "CONTRASTIVE_EPOCHS=5" in (output_dir / ".done" / "settings").read_text().splitlines()


def test_unrecorded_setting_change_accepted(tmp_path):
    output_dir = tmp_path / "out"
    run_script(PIPELINE, own_files_env(tmp_path, output_dir, SKIP_MLM="1"))
    result = run_script(PIPELINE, own_files_env(tmp_path, output_dir, SKIP_MLM="1", EVAL_BATCH_SIZE="7"))
    assert "settings differ" not in result.stderr
    assert "stage 'prepare_contrastive' failed" in result.stderr


# (MLM_INPUT_FILES, the input to change, how, the stage that reads it): a file matched by a glob,
# a file added to a folder, the pairs and the evaluation corpus.
CHANGED_INPUTS = [
    ("texts/*.txt", "texts/a.txt", "touch", "prepare_mlm"),
    ("texts", "texts/b.txt", "create", "prepare_mlm"),
    ("texts/*.txt", "pairs.tsv", "touch", "prepare_contrastive"),
    ("texts/*.txt", "corpus.txt", "touch", "prepare_contrastive"),
]


@pytest.mark.parametrize("mlm_input, changed_input, change, stage", CHANGED_INPUTS)
def test_changed_input_reruns_prepare(tmp_path, mlm_input, changed_input, change, stage):
    output_dir = tmp_path / "out"
    skip_mlm = "0" if stage == "prepare_mlm" else "1"
    env = own_files_env(tmp_path, output_dir, SKIP_MLM=skip_mlm, MLM_INPUT_FILES=str(tmp_path / "inputs" / mlm_input))
    if stage == "prepare_mlm":
        mark_done(output_dir, "prepare_mlm", "mlm")
        stop_when_unchanged = "stage 'prepare_contrastive' failed"
    else:
        mark_done(output_dir, "prepare_contrastive", "contrastive_no_mlm")
        stop_when_unchanged = "stage 'report' failed"

    unchanged = run_script(PIPELINE, env)
    assert f"==== {stage}: already finished" in unchanged.stdout
    assert stop_when_unchanged in unchanged.stderr

    path = tmp_path / "inputs" / changed_input
    if change == "create":
        path.write_text("second text\n")
    else:
        later = (output_dir / ".done" / stage).stat().st_mtime + 10
        os.utime(path, (later, later))
    result = run_script(PIPELINE, env)
    # A new file changes its folder's modification time, and the folder is listed first.
    reported = path.parent if change == "create" else path
    assert f"==== {stage}: input {reported} changed after the stage finished" in result.stdout
    assert f"stage '{stage}' failed" in result.stderr


def test_changed_models_rerun_report(tmp_path):
    output_dir = tmp_path / "out"
    mark_done(output_dir, "prepare_contrastive", "contrastive_no_mlm", "report")
    result = run_script(PIPELINE, own_files_env(tmp_path, output_dir, SKIP_MLM="1"))
    assert "==== contrastive_no_mlm: already finished" in result.stdout
    assert "stage 'report' failed" in result.stderr


def test_interrupted_stage_named(tmp_path):
    output_dir = tmp_path / "out"
    mark_done(output_dir, "prepare_mlm", "mlm", "prepare_contrastive")

    model_dir = output_dir / "mlm" / "sentence-transformer-format"
    model_dir.mkdir(parents=True)
    for name in ("modules.json", "model.safetensors", "vocab.txt"):
        (model_dir / name).touch()
    # A stand-in for the contrastive stage's Python: it signals that it runs, then sleeps, and
    # Ctrl-C ends it with KeyboardInterrupt, so that it dies of SIGINT as the real script does.
    ready = tmp_path / "ready"
    sleepy_python = tmp_path / "sleepy_python"
    sleepy_python.write_text(
        f"#!/bin/sh\nexec {sys.executable} -c \"import pathlib, time; pathlib.Path('{ready}').touch(); time.sleep(60)\"\n"
    )
    sleepy_python.chmod(0o755)
    env = own_files_env(tmp_path, output_dir, PYTHON=str(sleepy_python))

    process = subprocess.Popen(
        ["bash", str(PIPELINE)], env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the contrastive stage did not start"
        os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    assert process.returncode == 130
    assert "==== command:" in stdout
    assert "stage 'contrastive' interrupted by SIGINT" in stderr
    assert "rerun the same command to resume" in stderr
    assert not (output_dir / ".done" / "contrastive").exists()


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
