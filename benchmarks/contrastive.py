"""Contrastive training throughput and the peak memory of the cached loss.

Throughput: our `run_contrastive_finetuning.build_train_objective` (its data loader and loss)
against the stock `NoDuplicatesDataLoader` and `MultipleNegativesRankingLoss`, both trained by
`SentenceTransformer.fit` with the same model, pairs, batch size and fit arguments.

Memory: each measurement runs in a child process (`python -m benchmarks.contrastive`), which
trains one step on one batch and samples its own resident memory. Run as a script it prints one
JSON line; the parent reads it.
"""

import argparse
import copy
import json
import logging
import sys
import tempfile
from pathlib import Path

import psutil
import torch

from benchmarks.common import (
    PairedTimings,
    RssSampler,
    TrainerProbe,
    alternate,
    child_environment,
    last_json_line,
    probed_trainers,
    run_measured,
)

logger = logging.getLogger(__name__)


def distinct_pairs(pairs: list[tuple[str, str]], count: int) -> list[tuple[str, str]]:
    """Keep the first `count` pairs whose query and passage both appear for the first time.

    With distinct texts the stock `NoDuplicatesDataLoader` yields every row, so both variants
    train on the same rows and the same number of steps.
    """
    seen_queries, seen_passages, selected = set(), set(), []
    for query, passage in pairs:
        if query in seen_queries or passage in seen_passages:
            continue
        seen_queries.add(query)
        seen_passages.add(passage)
        selected.append((query, passage))
        if len(selected) == count:
            return selected
    raise ValueError(f"only {len(selected)} pairs with distinct texts, {count} needed; lower the batch size or steps")


def run_contrastive_benchmark(
    model_path: str,
    pairs: list[tuple[str, str]],
    batch_size: int,
    max_seq_length: int,
    warmup_steps: int,
    timed_steps: int,
    rounds: int,
    seed: int = 42,
) -> dict:
    """Time `fit` steps with our loader and loss and with the stock ones, alternating, and return the summary."""
    from sentence_transformers import InputExample, SentenceTransformer
    from sentence_transformers.sentence_transformer.datasets import NoDuplicatesDataLoader
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from run_contrastive_finetuning import build_train_objective

    max_steps = warmup_steps + timed_steps
    examples = [InputExample(texts=[query, passage]) for query, passage in distinct_pairs(pairs, max_steps * batch_size)]
    initial_model = SentenceTransformer(model_path, device="cpu")
    initial_model.max_seq_length = max_seq_length

    def run(variant: str) -> TrainerProbe:
        model = copy.deepcopy(initial_model)
        if variant == "ours":
            loader, loss = build_train_objective(model, examples, batch_size=batch_size, seed=seed)
        else:
            loader = NoDuplicatesDataLoader(examples, batch_size=batch_size)
            loss = MultipleNegativesRankingLoss(model)
        with tempfile.TemporaryDirectory() as checkpoint_dir, probed_trainers() as probes:
            model.fit(
                train_objectives=[(loader, loss)],
                epochs=1,
                steps_per_epoch=max_steps,
                warmup_steps=0,
                checkpoint_path=checkpoint_dir,
                checkpoint_save_steps=max_steps + 1,
                show_progress_bar=False,
            )
        return probes[0]

    logger.info("Contrastive: %s, batch %d pairs, max_seq_length %d", Path(model_path).name, batch_size, max_seq_length)
    timings: PairedTimings = alternate(rounds, warmup_steps, lambda: run("ours"), lambda: run("stock"))
    result = timings.summary(batch_size, "pairs")
    result.update({"batch_size": batch_size, "max_seq_length": max_seq_length})
    return result


def measure_cached_loss_memory(
    model_path: str,
    pairs: list[tuple[str, str]],
    batch_size: int,
    mini_batch_size: int,
    max_seq_length: int,
    rounds: int,
    threads: int,
) -> dict:
    """Measure the peak memory of one training step with the plain loss and the cached loss, each in a child.

    Returns the peak RSS increase over the child's RSS just before the step, for both losses, and
    their ratio. The pairs go to the children through a temporary JSON file.
    """
    with tempfile.TemporaryDirectory() as work_dir:
        pairs_path = Path(work_dir) / "pairs.json"
        pairs_path.write_text(json.dumps(distinct_pairs(pairs, batch_size)), encoding="utf-8")
        measurements = {"plain": [], "cached": []}
        for round_index in range(rounds):
            order = ["cached", "plain"] if round_index % 2 == 0 else ["plain", "cached"]
            for loss_name in order:
                command = [
                    sys.executable, "-m", "benchmarks.contrastive",
                    "--model_path", model_path,
                    "--pairs_file", str(pairs_path),
                    "--max_seq_length", str(max_seq_length),
                ]  # fmt: skip
                if loss_name == "cached":
                    command += ["--mini_batch_size", str(mini_batch_size)]
                child = run_measured(command, env=child_environment(threads))
                report = last_json_line(child["output"])
                logger.info(
                    "memory, %s loss: +%.0f MiB during the step (process peak %.0f MiB)",
                    loss_name,
                    report["step_peak_increase_bytes"] / 2**20,
                    child["peak_rss_bytes"] / 2**20,
                )
                measurements[loss_name].append(report)

    def median_increase(loss_name: str) -> float:
        return float(torch.tensor([report["step_peak_increase_bytes"] for report in measurements[loss_name]]).median())

    plain, cached = median_increase("plain"), median_increase("cached")
    return {
        "batch_size": batch_size,
        "mini_batch_size": mini_batch_size,
        "max_seq_length": max_seq_length,
        "plain_step_peak_increase_mib": plain / 2**20,
        "cached_step_peak_increase_mib": cached / 2**20,
        "ratio_cached_over_plain": cached / plain,
        "measurements": measurements,
    }


def measure_one_step(model_path: str, pairs_file: str, max_seq_length: int, mini_batch_size: int | None) -> dict:
    """Train one step on all pairs of `pairs_file` as one batch, and report this process's memory."""
    from sentence_transformers import SentenceTransformer

    from run_contrastive_finetuning import build_train_objective

    pairs = json.loads(Path(pairs_file).read_text(encoding="utf-8"))
    model = SentenceTransformer(model_path, device="cpu")
    model.max_seq_length = max_seq_length
    _, loss = build_train_objective(model, [], batch_size=len(pairs), mini_batch_size=mini_batch_size)
    features = [model.tokenize([pair[column] for pair in pairs]) for column in (0, 1)]  # 2 x (batch, tokens)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    model.train()

    rss_before = psutil.Process().memory_info().rss
    with RssSampler(psutil.Process().pid, interval_seconds=0.005) as sampler:
        loss(features, labels=None).backward()
        optimizer.step()
    return {
        "loss": "cached" if mini_batch_size else "plain",
        "rss_before_step_bytes": rss_before,
        "step_peak_increase_bytes": max(sampler.peak_bytes - rss_before, 0),
        "tokens_per_text": [int(feature["input_ids"].shape[1]) for feature in features],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Measure the memory of one contrastive training step (a benchmark child).")
    parser.add_argument("--model_path", required=True, help="sentence-transformers model folder")
    parser.add_argument("--pairs_file", required=True, help="JSON list of [query, passage] pairs; all form one batch")
    parser.add_argument("--max_seq_length", type=int, required=True, help="truncation length in tokens")
    parser.add_argument("--mini_batch_size", type=int, default=None, help="use the cached loss with this mini batch")
    arguments = parser.parse_args()
    torch.manual_seed(0)
    print(json.dumps(measure_one_step(arguments.model_path, arguments.pairs_file, arguments.max_seq_length, arguments.mini_batch_size)))
