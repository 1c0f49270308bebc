"""Tests of the MLM stage: `run_mlm_pretraining.main()` on tiny models, and two slow end-to-end runs."""

import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer

import run_mlm_pretraining
from conftest import REPO_ROOT, SAMPLE_SENTENCES, build_tiny_bert_mlm, build_tiny_tokenizer
from e5_pipeline import mlm_training
from e5_pipeline.beir import load_corpus
from e5_pipeline.csv_io import write_csv
from e5_pipeline.mlm_training import NonFiniteLossError, OffsetPaddingCollator, perplexity
from e5_pipeline.models import build_mean_pooling_model


@pytest.fixture
def text_files(tmp_path) -> dict[str, Path]:
    """`train.csv` with the 48 sample sentences and `validation.csv` with 12 of them."""
    paths = {"train": tmp_path / "train.csv", "validation": tmp_path / "validation.csv"}
    write_csv(paths["train"], ["text"], [[sentence] for sentence in SAMPLE_SENTENCES])
    write_csv(paths["validation"], ["text"], [[sentence] for sentence in SAMPLE_SENTENCES[::4]])
    return paths


def run_arguments(model_dir, text_files, output_dir, *extra: str) -> list[str]:
    """Return a short CPU run's argument list: 4-example batches, 32-token blocks, 2 steps."""
    return [
        "--model_name_or_path", str(model_dir),
        "--train_file", str(text_files["train"]),
        "--validation_file", str(text_files["validation"]),
        "--output_dir", str(output_dir),
        "--max_seq_length", "32",
        "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "4",
        "--max_steps", "2",
        "--logging_steps", "1",
        "--save_strategy", "no",
        "--report_to", "none",
        "--use_cpu",
        "--do_train",
        "--do_eval",
        *extra,
    ]  # fmt: skip


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


class RecordingHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_pretrained_folder_trains_and_saves(tiny_bert_dir, text_files, tmp_path, caplog):
    output_dir = tmp_path / "out"
    # transformers' loggers do not propagate to the root logger, so caplog cannot see them.
    report_handler = RecordingHandler()
    report_logger = logging.getLogger("transformers.modeling_utils")
    report_logger.addHandler(report_handler)
    try:
        results = run_mlm_pretraining.main(run_arguments(tiny_bert_dir, text_files, output_dir))
    finally:
        report_logger.removeHandler(report_handler)
    # Loading the MLM checkpoint as a bare encoder leaves out the head on purpose, so transformers'
    # table of unexpected and missing weights must not reach the user.
    assert not [message for message in report_handler.messages if "LOAD REPORT" in message]

    all_results = read_json(output_dir / "all_results.json")
    assert all_results == pytest.approx(results)
    for key in ("train_loss", "eval_loss", "perplexity", "train_samples", "eval_samples"):
        assert key in all_results
    assert all_results["perplexity"] == pytest.approx(perplexity(all_results["eval_loss"]))
    assert "train_loss" in read_json(output_dir / "train_results.json")
    assert "perplexity" in read_json(output_dir / "eval_results.json")
    # 48 sentences of 17 or 18 tokens each, packed into 32-token blocks.
    assert all_results["train_samples"] == all_results["train_tokens"] // 32

    sentence_dir = output_dir / "sentence-transformer-format"
    caplog.clear()
    with caplog.at_level(logging.INFO):
        reloaded = SentenceTransformer(str(sentence_dir), device="cpu")
    assert "Creating a new one" not in caplog.text
    assert "No sentence-transformers model found" not in caplog.text
    assert reloaded.max_seq_length == 32
    in_memory = build_mean_pooling_model(str(output_dir), 32, device="cpu")
    texts = SAMPLE_SENTENCES[:3]
    assert torch.allclose(
        torch.as_tensor(reloaded.encode(texts)), torch.as_tensor(in_memory.encode(texts)), atol=1e-6
    )


def test_from_scratch_with_trained_tokenizer(text_files, tmp_path):
    output_dir = tmp_path / "scratch"
    arguments = run_arguments("unused", text_files, output_dir)
    arguments = arguments[2:] + [
        "--model_type", "bert",
        "--config_overrides", "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64",
        "--train_tokenizer_vocab_size", "300",
    ]  # fmt: skip
    results = run_mlm_pretraining.main(arguments)

    config = read_json(output_dir / "config.json")
    assert config["hidden_size"] == 32
    assert config["num_hidden_layers"] == 1
    tokenizer_vocab = read_json(output_dir / "tokenizer.json")["model"]["vocab"]
    assert config["vocab_size"] == len(tokenizer_vocab)
    assert len(tokenizer_vocab) <= 300
    assert results["eval_loss"] > 0
    model = SentenceTransformer(str(output_dir / "sentence-transformer-format"), device="cpu")
    assert model.encode(["boundary layer"]).shape == (1, 32)


def test_from_scratch_needs_tokenizer(text_files, tmp_path):
    arguments = run_arguments("unused", text_files, tmp_path / "out")[2:] + ["--model_type", "bert"]
    with pytest.raises(ValueError, match=r"needs a tokenizer: pass --tokenizer_name, or --train_tokenizer_vocab_size"):
        run_mlm_pretraining.main(arguments)


def test_resume_continues_next_step(tiny_bert_dir, text_files, tmp_path):
    arguments = ["--save_strategy", "steps", "--save_steps", "2", "--max_steps", "4", "--seed", "7"]
    straight_dir = tmp_path / "straight"
    run_mlm_pretraining.main(run_arguments(tiny_bert_dir, text_files, straight_dir, *arguments))

    # A run that stopped right after saving checkpoint-2, started again with the same command.
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(straight_dir / "checkpoint-2", resumed_dir / "checkpoint-2")
    shutil.copy(straight_dir / "mlm_run_settings.json", resumed_dir)
    run_mlm_pretraining.main(run_arguments(tiny_bert_dir, text_files, resumed_dir, *arguments))

    def step_losses(output_dir):
        state = read_json(output_dir / "checkpoint-4" / "trainer_state.json")
        return state, {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}

    straight_state, straight_losses = step_losses(straight_dir)
    resumed_state, resumed_losses = step_losses(resumed_dir)
    assert sorted(resumed_losses) == [1, 2, 3, 4]
    assert resumed_state["train_batch_size"] == straight_state["train_batch_size"] == 4
    straight_epochs = [entry["epoch"] for entry in straight_state["log_history"] if "loss" in entry]
    resumed_epochs = [entry["epoch"] for entry in resumed_state["log_history"] if "loss" in entry]
    assert resumed_epochs == straight_epochs
    # Steps 1 and 2 come from checkpoint-2 unchanged. Steps 3 and 4 see the same batches, but Trainer
    # restores the random state only after drawing the first resumed batch, so the masks differ.
    assert [resumed_losses[step] for step in (1, 2)] == [straight_losses[step] for step in (1, 2)]
    assert resumed_losses[3] == pytest.approx(straight_losses[3], rel=0.05)
    assert resumed_losses[3] != resumed_losses[2]


def test_resume_other_run_rejected(tiny_bert_dir, text_files, tmp_path):
    output_dir = tmp_path / "out"
    saving = ["--save_strategy", "steps", "--save_steps", "2"]
    run_mlm_pretraining.main(run_arguments(tiny_bert_dir, text_files, output_dir, *saving))

    other_batch = run_arguments(tiny_bert_dir, text_files, output_dir, *saving, "--per_device_train_batch_size", "2")
    with pytest.raises(ValueError, match=r"contains checkpoints of another run \(global_train_batch_size: 4 there, 2 now\)"):
        run_mlm_pretraining.main(other_batch)

    results = run_mlm_pretraining.main(other_batch + ["--overwrite_output"])
    assert results["train_samples"] > 0
    assert read_json(output_dir / "mlm_run_settings.json")["global_train_batch_size"] == 2


def test_checkpoints_without_settings_rejected(tiny_bert_dir, text_files, tmp_path):
    output_dir = tmp_path / "out"
    (output_dir / "checkpoint-5").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no mlm_run_settings.json, so they may come from another run"):
        run_mlm_pretraining.main(run_arguments(tiny_bert_dir, text_files, output_dir))


def test_incomplete_resume_checkpoint_rejected(tiny_bert_dir, text_files, tmp_path):
    checkpoint = tmp_path / "out" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"")
    arguments = run_arguments(tiny_bert_dir, text_files, tmp_path / "out", "--resume_from_checkpoint", str(checkpoint))
    with pytest.raises(FileNotFoundError, match=r"checkpoint-2' is incomplete: it needs model weights and trainer_state.json"):
        run_mlm_pretraining.main(arguments)
    missing = run_arguments(tiny_bert_dir, text_files, tmp_path / "out", "--resume_from_checkpoint", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"--resume_from_checkpoint '.*nope' not found"):
        run_mlm_pretraining.main(missing)


def test_overwrite_and_resume_contradict(tiny_bert_dir, text_files, tmp_path):
    arguments = run_arguments(tiny_bert_dir, text_files, tmp_path, "--overwrite_output", "--resume_from_checkpoint", "x")
    with pytest.raises(ValueError, match=r"--overwrite_output and --resume_from_checkpoint contradict"):
        run_mlm_pretraining.main(arguments)


def test_line_by_line_keeps_rows(tiny_bert_dir, text_files, tmp_path):
    output_dir = tmp_path / "out"
    arguments = run_arguments(tiny_bert_dir, text_files, output_dir, "--line_by_line", "--max_seq_length", "12")
    results = run_mlm_pretraining.main(arguments)
    assert results["train_samples"] == len(SAMPLE_SENTENCES)
    assert results["eval_samples"] == len(SAMPLE_SENTENCES[::4])


def test_line_by_line_truncates(tiny_bert_dir):
    from datasets import Dataset, DatasetDict
    from transformers import AutoTokenizer, TrainingArguments

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    raw = DatasetDict({"train": Dataset.from_dict({"text": SAMPLE_SENTENCES[:3] + ["jet noise"]})})
    data_args = run_mlm_pretraining.DataArguments(train_file="train.csv", line_by_line=True)
    training_args = TrainingArguments(output_dir="unused", use_cpu=True, report_to="none")
    tokenized, counts = run_mlm_pretraining.tokenize_texts(raw, tokenizer, data_args, 8, training_args)
    assert counts["train"]["truncated_rows"] == 3
    assert [len(ids) for ids in tokenized["train"]["input_ids"]] == [8, 8, 8, 4]
    assert all(ids[-1] == tokenizer.sep_token_id for ids in tokenized["train"]["input_ids"])


def test_whole_word_mask_runs(tiny_bert_dir, text_files, tmp_path):
    for mode in ([], ["--line_by_line", "--pad_to_max_length"]):
        output_dir = tmp_path / ("line" if mode else "grouped")
        results = run_mlm_pretraining.main(run_arguments(tiny_bert_dir, text_files, output_dir, "--whole_word_mask", *mode))
        assert results["eval_loss"] > 0


def test_whole_word_mask_masks_words(tiny_bert_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    texts = ["panelbuckling shockwave", "flutter", "jetnoise heattransfer boundary"]
    encoded = tokenizer(texts, return_special_tokens_mask=True, return_offsets_mapping=True)
    examples = [{key: encoded[key][index] for key in encoded} for index in range(len(texts))]
    collator = OffsetPaddingCollator(tokenizer=tokenizer, whole_word_mask=True, mlm_probability=0.5, seed=0)
    batch = collator(examples)
    assert batch["input_ids"].shape[0] == 3
    masked = batch["labels"] != -100
    for row, example in enumerate(examples):
        word_ids = encoded.word_ids(row)
        for word in set(word_id for word_id in word_ids if word_id is not None):
            positions = [index for index, word_id in enumerate(word_ids) if word_id == word]
            assert len({bool(masked[row, index]) for index in positions}) == 1, (texts[row], word)


def test_max_seq_length_clamped(tiny_bert_dir, text_files, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        results = run_mlm_pretraining.main(run_arguments(tiny_bert_dir, text_files, tmp_path, "--max_seq_length", "1000"))
    assert "--max_seq_length 1000 exceeds what the model and tokenizer accept; using 128 tokens instead" in caplog.text
    assert results["max_seq_length"] == 128


def test_too_small_corpus_rejected(tiny_bert_dir, text_files, tmp_path):
    write_csv(text_files["train"], ["text"], [["jet noise"], ["shock wave"]])
    with pytest.raises(ValueError, match=r"train.csv gives only 8 tokens for the train split, fewer than one block of --max_seq_length 32"):
        run_mlm_pretraining.main(run_arguments(tiny_bert_dir, text_files, tmp_path / "out"))
    # The settings of a run that never started must not block the next attempt.
    assert not (tmp_path / "out" / "mlm_run_settings.json").exists()


def test_blank_rows_counted(tiny_bert_dir, text_files, tmp_path, caplog):
    write_csv(text_files["train"], ["text"], [[sentence] for sentence in SAMPLE_SENTENCES] + [[" "], [""]])
    with caplog.at_level(logging.WARNING):
        run_mlm_pretraining.main(run_arguments(tiny_bert_dir, text_files, tmp_path / "out"))
    assert "Dropped 2 blank rows of 50 in" in caplog.text


def test_validation_split_held_out(tiny_bert_dir, text_files, tmp_path):
    arguments = run_arguments(tiny_bert_dir, text_files, tmp_path / "out", "--line_by_line", "--validation_split_percentage", "25")
    arguments.remove("--validation_file")
    arguments.remove(str(text_files["validation"]))
    results = run_mlm_pretraining.main(arguments)
    assert results["eval_samples"] == 12
    assert results["train_samples"] == 36


def test_non_finite_loss_stops(tiny_bert_dir, text_files, tmp_path, monkeypatch):
    def nan_loss(model, inputs):
        return model.cls.predictions.bias.sum() * float("nan")

    monkeypatch.setattr(mlm_training, "masked_only_mlm_loss", nan_loss)
    output_dir = tmp_path / "out"
    with pytest.raises(NonFiniteLossError, match=r"The training loss became nan at step 1 \(learning rate 5e-05\)") as raised:
        run_mlm_pretraining.main(run_arguments(tiny_bert_dir, text_files, output_dir))
    message = str(raised.value)
    assert "Likely causes: a learning rate too high for this model (lower --learning_rate" in message
    assert "an fp16 overflow (use --bf16 or drop --fp16)" in message
    assert "bad training data" in message
    assert not (output_dir / "model.safetensors").exists()
    assert not (output_dir / "sentence-transformer-format").exists()
    assert not (output_dir / "all_results.json").exists()


@pytest.mark.parametrize("masked_only", [True, False], ids=["masked-only", "stock"])
def test_batch_without_masks_trains(tiny_bert_dir, tmp_path, monkeypatch, masked_only):
    if not masked_only:
        monkeypatch.setattr(mlm_training, "supports_masked_only_head", lambda model: False)
    paths = {"train": tmp_path / "train.csv", "validation": tmp_path / "validation.csv"}
    words = ["jet", "noise", "shock", "wave", "flutter", "panel"]
    write_csv(paths["train"], ["text"], [[word] for word in words])
    write_csv(paths["validation"], ["text"], [[word] for word in words[:2]])
    output_dir = tmp_path / "out"
    # One maskable token per row and a 1% masking rate: nearly every batch of 2 rows has no mask.
    arguments = run_arguments(
        tiny_bert_dir, paths, output_dir, "--line_by_line", "--per_device_train_batch_size", "2",
        "--mlm_probability", "0.01", "--max_steps", "3", "--seed", "3",
    )  # fmt: skip
    results = run_mlm_pretraining.main(arguments)

    log_history = read_json(output_dir / "trainer_state.json")["log_history"]
    step_losses = [entry["loss"] for entry in log_history if "loss" in entry]
    assert len(step_losses) == 3
    assert 0.0 in step_losses
    assert results["train_loss"] == pytest.approx(sum(step_losses) / 3)
    assert not math.isnan(results["eval_loss"])


def test_missing_model_folder_rejected(tiny_bert_dir, text_files, tmp_path):
    missing = tmp_path / "nomodel"
    output_dir = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match=r"--model_name_or_path: model folder '.*nomodel' not found\. Pass an existing"):
        run_mlm_pretraining.main(run_arguments(missing, text_files, output_dir))
    for flag in ("--config_name", "--tokenizer_name"):
        arguments = run_arguments(tiny_bert_dir, text_files, output_dir, flag, str(missing))
        with pytest.raises(FileNotFoundError, match=rf"{flag}: model folder '.*nomodel' not found"):
            run_mlm_pretraining.main(arguments)
    assert not output_dir.exists()


def test_model_type_without_mlm_rejected(text_files, tmp_path):
    arguments = run_arguments("unused", text_files, tmp_path / "out")[2:] + ["--model_type", "vit"]
    with pytest.raises(ValueError, match=r"--model_type 'vit' is invalid: it must be a model type with a masked-LM class, one of albert, .*\bbert, .*distilbert, .*roberta, "):
        run_mlm_pretraining.main(arguments)


def test_model_type_help_is_short():
    from transformers import HfArgumentParser

    help_text = " ".join(HfArgumentParser(run_mlm_pretraining.ModelArguments).format_help().split())
    assert "such as bert, roberta or distilbert" in help_text
    assert "xlm-roberta-xl" not in help_text
    assert "wav2vec2" not in help_text


def test_validation_split_with_file_warns(tiny_bert_dir, text_files, tmp_path, caplog):
    arguments = run_arguments(tiny_bert_dir, text_files, tmp_path / "out", "--line_by_line", "--validation_split_percentage", "25")
    with caplog.at_level(logging.WARNING):
        results = run_mlm_pretraining.main(arguments)
    assert "--validation_split_percentage 25.0 is ignored: --validation_file" in caplog.text
    assert results["eval_samples"] == len(SAMPLE_SENTENCES[::4])
    assert results["train_samples"] == len(SAMPLE_SENTENCES)


def test_huge_learning_rate_stops(tiny_bert_dir, text_files, tmp_path):
    arguments = run_arguments(
        tiny_bert_dir, text_files, tmp_path, "--learning_rate", "1e30", "--lr_scheduler_type", "constant", "--max_steps", "6"
    )
    with pytest.raises(NonFiniteLossError, match=r"at step [2-6] \(learning rate 1e\+30\)"):
        run_mlm_pretraining.main(arguments)


@pytest.fixture(scope="module")
def headless_bert_dir(tiny_bert_dir, tmp_path_factory) -> Path:
    """The tiny BERT saved as a plain BertModel: an encoder without an MLM head, like an embedding model."""
    from transformers import AutoTokenizer, BertModel

    output_dir = tmp_path_factory.mktemp("headless-bert")
    BertModel.from_pretrained(tiny_bert_dir, add_pooling_layer=False).save_pretrained(output_dir)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(output_dir)
    return output_dir


def test_new_head_warmup_freezes_encoder(headless_bert_dir, text_files, tmp_path, caplog):
    output_dir = tmp_path / "out"
    arguments = run_arguments(headless_bert_dir, text_files, output_dir, "--max_steps", "3", "--head_warmup_steps", "3")
    with caplog.at_level(logging.WARNING):
        results = run_mlm_pretraining.main(arguments)
    assert "has no MLM head: cls.predictions.bias, cls.predictions.transform.LayerNorm.bias" in caplog.text
    assert results["head_warmup_steps"] == 3

    before = load_file(headless_bert_dir / "model.safetensors")
    after = load_file(output_dir / "model.safetensors")
    for name, tensor in before.items():
        assert torch.equal(after[f"bert.{name}"], tensor), name
    assert "cls.predictions.transform.dense.weight" in after


def test_new_head_warmup_then_encoder_trains(headless_bert_dir, text_files, tmp_path, caplog):
    output_dir = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        results = run_mlm_pretraining.main(run_arguments(headless_bert_dir, text_files, output_dir, "--max_steps", "3"))
    # Unset --head_warmup_steps gives 10% of 3 steps, at least 1.
    assert results["head_warmup_steps"] == 1
    assert "training it alone, encoder frozen, for its first 1 of 3 steps" in caplog.text
    before = load_file(headless_bert_dir / "model.safetensors")
    after = load_file(output_dir / "model.safetensors")
    changed = [name for name, tensor in before.items() if not torch.equal(after[f"bert.{name}"], tensor)]
    assert changed


def test_loaded_head_no_warmup(tiny_bert_dir, text_files, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        results = run_mlm_pretraining.main(run_arguments(tiny_bert_dir, text_files, tmp_path))
    assert results["head_warmup_steps"] == 0
    # The head trained at the encoder's learning rate, so no rate of its own is recorded.
    assert "head_learning_rate" not in results
    assert "has no MLM head" not in caplog.text


def test_loaded_head_requested_warmup(tiny_bert_dir, text_files, tmp_path):
    output_dir = tmp_path / "out"
    run_mlm_pretraining.main(run_arguments(tiny_bert_dir, text_files, output_dir, "--head_warmup_steps", "2"))
    before = load_file(tiny_bert_dir / "model.safetensors")
    after = load_file(output_dir / "model.safetensors")
    encoder_names = [name for name in before if name.startswith("bert.")]
    head_names = [name for name in before if name.startswith("cls.") and name in after]
    assert encoder_names
    assert head_names
    for name in encoder_names:
        assert torch.equal(after[name], before[name]), name
    assert not torch.equal(after["cls.predictions.transform.dense.weight"], before["cls.predictions.transform.dense.weight"])


def test_head_learning_rate_is_separate(tiny_bert_dir, text_files, tmp_path):
    output_dir = tmp_path / "out"
    arguments = run_arguments(tiny_bert_dir, text_files, output_dir, "--learning_rate", "0", "--head_learning_rate", "1e-3")
    run_mlm_pretraining.main(arguments)
    before = load_file(tiny_bert_dir / "model.safetensors")
    after = load_file(output_dir / "model.safetensors")
    encoder_names = [name for name in before if name.startswith("bert.")]
    assert encoder_names
    for name in encoder_names:
        assert torch.equal(after[name], before[name]), name
    assert not torch.equal(after["cls.predictions.transform.dense.weight"], before["cls.predictions.transform.dense.weight"])
    assert not torch.equal(after["cls.predictions.bias"], before["cls.predictions.bias"])
    # The logged learning rate is the encoder's.
    state = read_json(output_dir / "trainer_state.json")
    assert [entry["learning_rate"] for entry in state["log_history"] if "learning_rate" in entry] == [0, 0]


def test_new_head_default_learning_rate(headless_bert_dir, text_files, tmp_path, caplog):
    output_dir = tmp_path / "out"
    arguments = run_arguments(
        headless_bert_dir, text_files, output_dir, "--learning_rate", "0", "--head_warmup_steps", "0", "--log_level", "info"
    )
    with caplog.at_level(logging.INFO):
        results = run_mlm_pretraining.main(arguments)
    assert "The new MLM head trains at a peak learning rate of 0.001 (--head_learning_rate unset)." in caplog.text
    assert results["head_learning_rate"] == 1e-3
    before = load_file(headless_bert_dir / "model.safetensors")
    after = load_file(output_dir / "model.safetensors")
    for name, tensor in before.items():
        assert torch.equal(after[f"bert.{name}"], tensor), name


def test_head_learning_rate_must_be_positive(tiny_bert_dir, text_files, tmp_path):
    arguments = run_arguments(tiny_bert_dir, text_files, tmp_path, "--head_learning_rate", "0")
    with pytest.raises(ValueError, match=r"--head_learning_rate must be above 0, got 0.0. Pass a positive rate"):
        run_mlm_pretraining.main(arguments)


def test_small_embedding_resized(text_files, tmp_path, caplog):
    model_dir = tmp_path / "model"
    tokenizer = build_tiny_tokenizer(model_dir)
    build_tiny_bert_mlm(model_dir, vocab_size=len(tokenizer) - 10)
    output_dir = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        run_mlm_pretraining.main(run_arguments(model_dir, text_files, output_dir))
    assert f"The tokenizer has {len(tokenizer)} entries but the embedding matrix {len(tokenizer) - 10} rows" in caplog.text
    assert read_json(output_dir / "config.json")["vocab_size"] == len(tokenizer)


def test_perplexity_overflow_is_infinite():
    assert perplexity(1e6) == float("inf")
    assert perplexity(0.0) == 1.0


@pytest.mark.slow
def test_two_processes_one_output(tiny_bert_dir, text_files, tmp_path):
    output_dir = tmp_path / "out"
    arguments = run_arguments(tiny_bert_dir, text_files, output_dir, "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "2")
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(REPO_ROOT / "run_mlm_pretraining.py"), *arguments,
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    completed = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-20000:]
    assert "Process 1 of 2" in completed.stderr
    assert "Process 0 of 2" in completed.stderr

    results = read_json(output_dir / "all_results.json")
    state = read_json(output_dir / "trainer_state.json")
    assert state["global_step"] == 3
    # Two processes of 4 examples each make one optimizer step.
    assert read_json(output_dir / "mlm_run_settings.json")["global_train_batch_size"] == 8
    assert "eval_loss" in results
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    model = SentenceTransformer(str(output_dir / "sentence-transformer-format"), device="cpu")
    assert model.encode(["shock wave"]).shape == (1, 32)


@pytest.mark.slow
def test_two_processes_same_weights(tiny_bert_dir, text_files, tmp_path):
    output_dir = tmp_path / "out"
    arguments = run_arguments(tiny_bert_dir, text_files, output_dir, "--max_steps", "3")
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(REPO_ROOT / "tests" / "mlm_rank_digest.py"), *arguments,
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    completed = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-20000:]

    rank0 = (output_dir / "weights-digest-rank0.txt").read_text()
    rank1 = (output_dir / "weights-digest-rank1.txt").read_text()
    assert rank0.startswith("True ")
    # Each process saw other batches, so only synchronised gradients leave the weights equal.
    assert rank0 == rank1


@pytest.mark.slow
def test_cranfield_epoch_lowers_perplexity(minilm_dir, cranfield_dir, tmp_path):
    abstracts = list(load_corpus(cranfield_dir / "corpus.jsonl").values())
    paths = {"train": tmp_path / "train.csv", "validation": tmp_path / "validation.csv"}
    write_csv(paths["train"], ["text"], [[text] for text in abstracts[100:]])
    write_csv(paths["validation"], ["text"], [[text] for text in abstracts[:100]])
    output_dir = tmp_path / "out"
    arguments = run_arguments(minilm_dir, paths, output_dir)
    arguments += [
        "--max_steps", "-1",
        "--num_train_epochs", "1",
        "--max_seq_length", "128",
        "--per_device_train_batch_size", "32",
        "--per_device_eval_batch_size", "64",
        "--learning_rate", "1e-4",
        "--eval_strategy", "epoch",
        "--eval_on_start",
        "--logging_steps", "10",
    ]  # fmt: skip
    results = run_mlm_pretraining.main(arguments)

    log_history = read_json(output_dir / "trainer_state.json")["log_history"]
    first_eval_loss = next(entry["eval_loss"] for entry in log_history if "eval_loss" in entry)
    assert results["perplexity"] < perplexity(first_eval_loss)
    assert results["head_warmup_steps"] > 0
