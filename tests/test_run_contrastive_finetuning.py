"""Tests of run_contrastive_finetuning.py and the prefix and evaluation helpers it uses."""

import json
import logging
import math
from pathlib import Path

import pytest
import torch

import run_contrastive_finetuning as script
from conftest import SAMPLE_SENTENCES, TOPICS
from e5_pipeline.csv_io import write_csv
from e5_pipeline.ir_evaluation import build_retrieval_evaluation_data, load_distractor_passages
from e5_pipeline.prefixes import add_prefix

QUERY_PREFIX = "query: "
PASSAGE_PREFIX = "passage: "
METRIC_NAMES = ["ndcg@10", "mrr@10", "recall@10", "recall@100", "map@100"]


def make_pairs(count: int, offset: int = 0) -> list[tuple[str, str]]:
    """Distinct (query, passage) pairs built from the conftest sentences."""
    return [
        (f"what does study {index} say about {TOPICS[index % len(TOPICS)]}", SAMPLE_SENTENCES[index])
        for index in range(offset, offset + count)
    ]


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory) -> dict[str, Path]:
    """Train and validation CSVs, a BEIR corpus of distractors and a text file of distractors.

    21 training rows (5 batches of 4 and one of 1); two of the queries and one passage already
    carry their prefix. Validation repeats texts: one query has two positives and one passage is
    the positive of two queries.
    """
    folder = tmp_path_factory.mktemp("pairs")
    train = make_pairs(21)
    train[0] = (QUERY_PREFIX + train[0][0], train[0][1])
    train[1] = (QUERY_PREFIX + train[1][0], PASSAGE_PREFIX + train[1][1])
    validation = make_pairs(6, offset=30)
    validation.append((validation[0][0], SAMPLE_SENTENCES[40]))
    validation.append(("which study repeats the measurements of study 31", validation[1][1]))
    write_csv(folder / "train.csv", ["query", "positive"], train)
    write_csv(folder / "validation.csv", ["query", "positive"], validation)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as handle:
        for index, sentence in enumerate(SAMPLE_SENTENCES[40:45]):
            handle.write(json.dumps({"_id": f"doc{index}", "title": "", "text": sentence}) + "\n")
    (folder / "passages.txt").write_text("\n".join(SAMPLE_SENTENCES[41:44]) + "\n\n", encoding="utf-8")
    return {
        "train": folder / "train.csv",
        "validation": folder / "validation.csv",
        "corpus": folder / "corpus.jsonl",
        "text": folder / "passages.txt",
    }


def base_args(model_dir: Path, files: dict[str, Path], output_dir: Path) -> list[str]:
    return [
        "--model_name_or_path", str(model_dir),
        "--train_file", str(files["train"]),
        "--validation_file", str(files["validation"]),
        "--output_dir", str(output_dir),
        "--prefix_query", QUERY_PREFIX,
        "--prefix_passage", PASSAGE_PREFIX,
        "--per_device_train_batch_size", "4",
        "--learning_rate", "1e-3",
        "--max_seq_length", "32",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def spied_run(tiny_sentence_transformer_dir, pair_files, tmp_path_factory):
    """One run with spies on what reaches the model, from an empty working directory.

    Records every training batch as the data collator receives it (the rows the loss sees) and
    every list of texts that the Transformer module tokenizes, in training and evaluation.
    """
    from sentence_transformers.base.data_collator import BaseDataCollator
    from sentence_transformers.sentence_transformer.modules import Transformer

    output_dir = tmp_path_factory.mktemp("run") / "output"
    working_dir = tmp_path_factory.mktemp("cwd")
    training_batches: list[list[dict]] = []
    tokenized_texts: list[str] = []
    collate = BaseDataCollator.__call__
    preprocess = Transformer.preprocess

    def spy_collate(self, features):
        training_batches.append([dict(row) for row in features])
        return collate(self, features)

    def spy_preprocess(self, inputs, *args, prompt=None, **kwargs):
        tokenized_texts.extend((prompt or "") + text for text in inputs)
        return preprocess(self, inputs, *args, prompt=prompt, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BaseDataCollator, "__call__", spy_collate)
        patch.setattr(Transformer, "preprocess", spy_preprocess)
        patch.chdir(working_dir)
        script.main(
            base_args(tiny_sentence_transformer_dir, pair_files, output_dir)
            + ["--eval_corpus_file", str(pair_files["corpus"]), "--num_train_epochs", "2", "--save_best_model"]
        )
    return {
        "output_dir": output_dir,
        "working_dir": working_dir,
        "training_batches": training_batches,
        "tokenized_texts": tokenized_texts,
    }


def test_add_prefix_counts():
    texts, already = add_prefix(["query: a", "b", "query: query: c"], QUERY_PREFIX)
    assert texts == ["query: a", "query: b", "query: query: c"]
    assert already == 2


def test_add_prefix_empty_prefix():
    assert add_prefix(["a", "b"], "") == (["a", "b"], 0)


def test_evaluator_oracle_repeated_positives():
    queries = ["q one", "q one", "q two", "q three"]
    positives = ["p shared", "p extra", "p shared", "p three"]
    data = build_retrieval_evaluation_data(queries, positives, distractors=["p three", "p other"])
    assert len(data.queries) == 3
    assert len(data.corpus) == 4
    assert data.num_distractors == 1
    corpus_id = {text: identifier for identifier, text in data.corpus.items()}
    query_id = {text: identifier for identifier, text in data.queries.items()}
    assert data.relevant_docs[query_id["q one"]] == {corpus_id["p shared"], corpus_id["p extra"]}

    evaluator, _ = script.build_evaluator(queries, positives, ["p three", "p other"])
    oracle_results = [
        [
            {"corpus_id": identifier, "score": 1.0 if identifier in data.relevant_docs[query] else 0.0}
            for identifier in data.corpus
        ]
        for query in evaluator.queries_ids
    ]
    scores = evaluator.compute_metrics(oracle_results)
    assert scores["ndcg@k"][10] == pytest.approx(1.0)
    assert scores["mrr@k"][10] == pytest.approx(1.0)
    assert scores["recall@k"][10] == pytest.approx(1.0)
    assert scores["recall@k"][100] == pytest.approx(1.0)
    assert scores["map@k"][100] == pytest.approx(1.0)


def test_distractors_from_text_file(pair_files, caplog):
    with caplog.at_level(logging.WARNING):
        passages = load_distractor_passages(pair_files["text"])
    assert passages == SAMPLE_SENTENCES[41:44]
    assert "left out 1 of 4 passages because they are empty" in caplog.text


def test_distractors_unknown_suffix(tmp_path):
    path = tmp_path / "corpus.parquet"
    path.write_text("x")
    with pytest.raises(ValueError, match=r"suffix '\.parquet'; expected one of \.jsonl, \.csv, \.txt"):
        load_distractor_passages(path)


def test_distractors_csv_column_names_flag(tmp_path):
    path = tmp_path / "corpus.csv"
    write_csv(path, ["passage"], [["a passage"]])
    with pytest.raises(ValueError, match=r"has no column 'text'; its header has 'passage'\. Pass the right column name with --eval_corpus_column"):
        load_distractor_passages(path, "text", column_flag="--eval_corpus_column")


def test_training_sees_every_row(spied_run):
    batches = spied_run["training_batches"]
    rows_per_epoch = 21
    assert len(batches) == 2 * math.ceil(rows_per_epoch / 4)
    assert sum(len(batch) for batch in batches) == 2 * rows_per_epoch
    first_epoch = {row["sentence_0"] for batch in batches[:6] for row in batch}
    assert len(first_epoch) == rows_per_epoch


def test_training_batches_no_duplicates(spied_run):
    for batch in spied_run["training_batches"]:
        passages = [row["sentence_1"] for row in batch]
        queries = [row["sentence_0"] for row in batch]
        assert len(set(passages)) == len(passages)
        assert len(set(queries)) == len(queries)


def test_model_inputs_prefixed_once(spied_run):
    texts = spied_run["tokenized_texts"]
    assert len(texts) > 0
    for text in texts:
        assert text.startswith((QUERY_PREFIX, PASSAGE_PREFIX)), text
        assert not text.startswith((QUERY_PREFIX * 2, PASSAGE_PREFIX * 2, QUERY_PREFIX + PASSAGE_PREFIX)), text
    for batch in spied_run["training_batches"]:
        for row in batch:
            assert row["sentence_0"].startswith(QUERY_PREFIX)
            assert row["sentence_1"].startswith(PASSAGE_PREFIX)


def test_nothing_written_outside_output_dir(spied_run):
    assert list(spied_run["working_dir"].iterdir()) == []


def test_eval_results_before_and_after(spied_run):
    results = json.loads((spied_run["output_dir"] / "eval_results.json").read_text())
    assert sorted(results["before"]) == sorted(METRIC_NAMES)
    assert sorted(results["after"]) == sorted(METRIC_NAMES)
    assert results["train_rows"] == 21
    # 7 distinct queries; 7 distinct positives plus 5 distractors, one of which is a positive.
    assert results["validation"] == {"queries": 7, "corpus": 11, "distractors": 4}


def test_saved_models_record_prompts(spied_run):
    from sentence_transformers import SentenceTransformer

    output_dir = spied_run["output_dir"]
    assert len(list((output_dir / "checkpoints").glob("checkpoint-*"))) >= 1
    best = SentenceTransformer(str(output_dir / "best"), device="cpu")
    assert best.prompts["query"] == QUERY_PREFIX
    model = SentenceTransformer(str(output_dir), device="cpu")
    assert model.prompts["query"] == QUERY_PREFIX
    assert model.prompts["passage"] == PASSAGE_PREFIX
    with_prompt = model.encode(["heat transfer"], prompt_name="query", convert_to_tensor=True)
    by_hand = model.encode([QUERY_PREFIX + "heat transfer"], convert_to_tensor=True)
    torch.testing.assert_close(with_prompt, by_hand)


@pytest.mark.timeout(60)
def test_seed_reaches_fit_trainer(tiny_sentence_transformer_dir, pair_files, tmp_path, monkeypatch):
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer

    seeds = []
    train = SentenceTransformerTrainer.train

    def spy_train(self, *args, **kwargs):
        seeds.append((self.args.seed, self.args.data_seed))
        return train(self, *args, **kwargs)

    monkeypatch.setattr(SentenceTransformerTrainer, "train", spy_train)
    script.main(base_args(tiny_sentence_transformer_dir, pair_files, tmp_path / "out") + ["--seed", "7"])
    assert seeds == [(7, 7)]


def test_guard_fewer_rows_than_batch(tiny_sentence_transformer_dir, pair_files, tmp_path):
    args = base_args(tiny_sentence_transformer_dir, pair_files, tmp_path / "out") + ["--eval_strategy", "no"]
    args[args.index("--per_device_train_batch_size") + 1] = "32"
    with pytest.raises(ValueError, match=r"has 21 rows, fewer than one batch\. Use --per_device_train_batch_size 21"):
        script.main(args)


@pytest.mark.timeout(60)
def test_guard_few_distinct_passages(tiny_sentence_transformer_dir, tmp_path):
    rows = [(f"query {index}", SAMPLE_SENTENCES[index % 3]) for index in range(12)]
    write_csv(tmp_path / "train.csv", ["query", "positive"], rows)
    files = {"train": tmp_path / "train.csv", "validation": tmp_path / "train.csv"}
    args = base_args(tiny_sentence_transformer_dir, files, tmp_path / "out")
    with pytest.raises(
        ValueError,
        match=r"12 distinct queries and 3 distinct passages, but a batch may not contain the same text twice\. "
        r"Use --per_device_train_batch_size 3 or less",
    ):
        script.main(args)


@pytest.mark.timeout(60)
def test_guard_single_distinct_passage(tiny_sentence_transformer_dir, tmp_path):
    rows = [(f"query {index}", SAMPLE_SENTENCES[0]) for index in range(6)]
    write_csv(tmp_path / "train.csv", ["query", "positive"], rows)
    files = {"train": tmp_path / "train.csv", "validation": tmp_path / "train.csv"}
    args = base_args(tiny_sentence_transformer_dir, files, tmp_path / "out")
    with pytest.raises(ValueError, match=r"in-batch negatives need at least 2 distinct queries and 2 distinct passages"):
        script.main(args)


def test_eval_strategy_steps_runs(tiny_sentence_transformer_dir, pair_files, tmp_path):
    output_dir = tmp_path / "out"
    args = base_args(tiny_sentence_transformer_dir, pair_files, output_dir)
    script.main(args + ["--eval_strategy", "steps", "--eval_steps", "2", "--save_best_model"])
    results = json.loads((output_dir / "eval_results.json").read_text())
    assert sorted(results["after"]) == sorted(METRIC_NAMES)
    assert (output_dir / "best" / "modules.json").is_file()
    # The trainer logs its evaluations at steps 2, 4 and 6 under checkpoints/, and fit's own
    # evaluation at the end of the epoch under best/; each CSV has a header row.
    step_log = next((output_dir / "checkpoints" / "eval").glob("*.csv")).read_text().splitlines()
    epoch_log = next((output_dir / "best" / "eval").glob("*.csv")).read_text().splitlines()
    assert [line.split(",")[1] for line in step_log[1:]] == ["2", "4", "6"]
    assert len(epoch_log) == 2


def required_args(files: dict[str, Path], output_dir: Path) -> list[str]:
    """Only the required flags; the model path need not exist for parse_arguments."""
    return ["--model_name_or_path", "model", "--train_file", str(files["train"]), "--output_dir", str(output_dir)]


def test_eval_strategy_default_follows_data(pair_files, tmp_path):
    args = required_args(pair_files, tmp_path / "out")
    assert script.parse_arguments(args)[2].eval_strategy == "no"
    with_validation = args + ["--validation_file", str(pair_files["validation"])]
    assert script.parse_arguments(with_validation)[2].eval_strategy == "epoch"
    assert script.parse_arguments(with_validation + ["--eval_strategy", "no"])[2].eval_strategy == "no"


@pytest.mark.parametrize("strategy", ["epoch", "steps"])
def test_checks_eval_strategy_needs_validation(pair_files, tmp_path, strategy):
    args = required_args(pair_files, tmp_path / "out") + ["--eval_strategy", strategy, "--eval_steps", "2"]
    with pytest.raises(
        ValueError,
        match=rf"--eval_strategy '{strategy}' needs --validation_file; pass one, or leave out --eval_strategy to "
        "train without evaluation",
    ):
        script.parse_arguments(args)


@pytest.mark.parametrize("strategy", [None, "epoch", "no"])
def test_eval_steps_ignored_warns(pair_files, tmp_path, caplog, strategy):
    args = required_args(pair_files, tmp_path / "out") + ["--validation_file", str(pair_files["validation"])]
    args += ["--eval_steps", "5"] + (["--eval_strategy", strategy] if strategy else [])
    with caplog.at_level(logging.WARNING):
        script.parse_arguments(args)
    expected = strategy or "epoch"
    assert f"--eval_steps 5 is ignored because --eval_strategy is {expected!r}" in caplog.text


def test_eval_steps_with_steps_silent(pair_files, tmp_path, caplog):
    args = required_args(pair_files, tmp_path / "out") + ["--validation_file", str(pair_files["validation"])]
    with caplog.at_level(logging.WARNING):
        script.parse_arguments(args + ["--eval_strategy", "steps", "--eval_steps", "5"])
    assert "--eval_steps" not in caplog.text


def test_mini_batch_larger_than_batch_warns(pair_files, tmp_path, caplog):
    args = required_args(pair_files, tmp_path / "out") + ["--per_device_train_batch_size", "8"]
    with caplog.at_level(logging.WARNING):
        script.parse_arguments(args + ["--mini_batch_size", "8"])
    assert "--mini_batch_size" not in caplog.text
    with caplog.at_level(logging.WARNING):
        script.parse_arguments(args + ["--mini_batch_size", "16"])
    assert "--mini_batch_size 16 is larger than --per_device_train_batch_size 8" in caplog.text


def test_load_pairs_names_column_flag(tmp_path):
    write_csv(tmp_path / "train.csv", ["question", "answer"], [("q", "p")])
    with pytest.raises(
        ValueError,
        match=r"has no column 'query', 'positive'; its header has 'question', 'answer'\. Pass the right column name "
        r"with --query_column and --positive_column, or prepare",
    ):
        script.load_pairs(str(tmp_path / "train.csv"), "query", "positive", "train")


def test_help_states_each_default_once(capsys):
    with pytest.raises(SystemExit):
        script.parse_arguments(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "Default: 'epoch' with --validation_file, 'no' without it. --eval_steps" in help_text
    assert "Default: none. (default: )" not in help_text


def test_cached_loss_same_gradients(tiny_sentence_transformer_dir):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_sentence_transformer_dir), device="cpu")
    model.eval()  # no dropout, so both losses see the same forward pass
    pairs = make_pairs(8)
    features = [model.preprocess([pair[column] for pair in pairs]) for column in (0, 1)]
    labels = torch.zeros(len(pairs))

    gradients = []
    for mini_batch_size in (None, 3):
        model.zero_grad()
        _, loss = script.build_train_objective(
            model, [], batch_size=8, loss_scale=20.0, mini_batch_size=mini_batch_size
        )
        loss([dict(feature) for feature in features], labels).backward()
        gradients.append({name: parameter.grad.clone() for name, parameter in model.named_parameters() if parameter.grad is not None})
    plain, cached = gradients
    assert plain.keys() == cached.keys()
    assert type(script.build_train_objective(model, [], 8, mini_batch_size=3)[1]).__name__ == "CachedMultipleNegativesRankingLoss"
    for name in plain:
        torch.testing.assert_close(cached[name], plain[name], atol=1e-5, rtol=0, msg=name)


def test_resume_continues_from_checkpoint(tiny_sentence_transformer_dir, pair_files, tmp_path, caplog):
    from safetensors.torch import load_file

    output_dir = tmp_path / "out"
    args = base_args(tiny_sentence_transformer_dir, pair_files, output_dir) + [
        "--eval_strategy", "no",
        "--num_train_epochs", "2",
        "--checkpoint_save_steps", "4",
        "--checkpoint_save_total_limit", "0",
    ]  # fmt: skip
    script.main(args)
    checkpoints = output_dir / "checkpoints"
    assert sorted(path.name for path in checkpoints.iterdir()) == [
        "checkpoint-12", "checkpoint-4", "checkpoint-8"
    ]  # fmt: skip
    uninterrupted = load_file(output_dir / "model.safetensors")

    # Pretend the run stopped after step 4.
    for name in ("checkpoint-8", "checkpoint-12"):
        for path in sorted((checkpoints / name).rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        (checkpoints / name).rmdir()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        script.main(args + ["--resume_from_checkpoint"])
    assert f"Resuming from latest checkpoint: {checkpoints / 'checkpoint-4'}" in caplog.text
    state = json.loads((checkpoints / "checkpoint-12" / "trainer_state.json").read_text())
    assert state["global_step"] == 12
    resumed = load_file(output_dir / "model.safetensors")
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(resumed[name], tensor, msg=name)


def test_resume_without_checkpoint(tiny_sentence_transformer_dir, pair_files, tmp_path):
    args = base_args(tiny_sentence_transformer_dir, pair_files, tmp_path / "out") + ["--resume_from_checkpoint"]
    with pytest.raises(FileNotFoundError, match=r"no checkpoint-<step> folder in"):
        script.main(args)


def test_amp_on_cpu_warns(tiny_sentence_transformer_dir, pair_files, tmp_path, caplog):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU fallback")
    output_dir = tmp_path / "out"
    args = base_args(tiny_sentence_transformer_dir, pair_files, output_dir) + [
        "--use_amp", "--eval_strategy", "no", "--eval_corpus_file", str(pair_files["text"]),
    ]  # fmt: skip
    with caplog.at_level(logging.WARNING):
        script.main(args)
    assert "--use_amp needs CUDA; training on the CPU in float32 instead" in caplog.text
    assert (output_dir / "modules.json").is_file()


def test_cached_loss_run(tiny_sentence_transformer_dir, pair_files, tmp_path):
    output_dir = tmp_path / "out"
    args = base_args(tiny_sentence_transformer_dir, pair_files, output_dir) + ["--mini_batch_size", "3"]
    script.main(args)
    results = json.loads((output_dir / "eval_results.json").read_text())
    assert results["train_rows"] == 21
    assert results["after"]["ndcg@10"] > 0.0


@pytest.mark.slow
def test_minilm_cranfield_improves(minilm_dir, cranfield_dir, tmp_path):
    from e5_pipeline.beir import beir_paths, load_corpus, load_qrels, load_queries

    paths = beir_paths(cranfield_dir, "train")
    corpus, queries = load_corpus(paths["corpus"]), load_queries(paths["queries"])
    qrels = load_qrels(paths["qrels"])
    # Hold out every fifth training query for validation, so the test split stays untouched.
    # 64 tokens keep the run to minutes on a CPU.
    rows = {"train": [], "validation": []}
    for index, query_id in enumerate(sorted(qrels)):
        split = "validation" if index % 5 == 0 else "train"
        rows[split].extend((queries[query_id], corpus[document_id]) for document_id in sorted(qrels[query_id]))
    for split, split_rows in rows.items():
        write_csv(tmp_path / f"{split}.csv", ["query", "positive"], split_rows)

    output_dir = tmp_path / "out"
    script.main([
        "--model_name_or_path", str(minilm_dir),
        "--train_file", str(tmp_path / "train.csv"),
        "--validation_file", str(tmp_path / "validation.csv"),
        "--eval_corpus_file", str(paths["corpus"]),
        "--output_dir", str(output_dir),
        "--num_train_epochs", "1",
        "--per_device_train_batch_size", "16",
        "--learning_rate", "2e-5",
        "--max_seq_length", "64",
        "--eval_strategy", "no",
    ])  # fmt: skip
    results = json.loads((output_dir / "eval_results.json").read_text())
    # Two of the 1,400 abstracts are empty and are left out of the corpus.
    assert results["validation"]["corpus"] == 1398
    assert results["after"]["ndcg@10"] > results["before"]["ndcg@10"]
