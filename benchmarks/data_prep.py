"""Data preparation: wall time and peak memory of `prepare_mlm_data.py` against the simple way.

Both run as child processes on the same generated corpus, alternating which goes first, while a
sampler reads the resident memory of the child and its children every 20 ms.
"""

import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REPO_ROOT, child_environment, median, run_measured

logger = logging.getLogger(__name__)

POOL_LINES = 20_000
LINES_PER_WRITE = 2_000


def generate_corpus(path: Path, size_bytes: int, seed: int = 0) -> dict:
    """Write about `size_bytes` of English-like text lines to `path` and return its line count and size.

    A pool of random lines (Zipf-distributed made-up words, 4 to 160 words each) is drawn once;
    each output line is a pool line behind its own line number, so that no two lines repeat.
    About one line in 200 is empty, to give the scripts something to drop.
    """
    generator = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    words = ["".join(generator.choice(letters, size=generator.integers(2, 11))) for _ in range(5_000)]
    word_ranks = np.minimum(generator.zipf(1.3, size=(POOL_LINES, 160)), len(words)) - 1
    lengths = generator.integers(4, 161, size=POOL_LINES)
    pool = [" ".join(words[rank] for rank in word_ranks[row, : lengths[row]]) for row in range(POOL_LINES)]

    start = time.perf_counter()
    written = lines = 0
    with open(path, "w", encoding="utf-8") as handle:
        while written < size_bytes:
            choices = generator.integers(0, POOL_LINES, size=LINES_PER_WRITE)
            block = "".join(
                "\n" if choice % 200 == 0 else f"{lines + offset} {pool[choice]}.\n" for offset, choice in enumerate(choices)
            )
            handle.write(block)
            written += len(block.encode("utf-8"))
            lines += LINES_PER_WRITE
    logger.info("generated %s: %.0f MB, %d lines in %.1f s", path, written / 1e6, lines, time.perf_counter() - start)
    return {"bytes": written, "lines": lines}


def count_csv_rows(output_dir: Path) -> dict:
    """Read the row counts that `prepare_mlm_data.py` reports in its prepare_stats.json."""
    stats_path = output_dir / "prepare_stats.json"
    if not stats_path.is_file():
        return {}
    return json.loads(stats_path.read_text(encoding="utf-8")).get("rows_written", {})


def run_data_prep_benchmark(
    sizes_mb: list[int], rounds_per_size: list[int], threads: int, validation_split: float = 0.01
) -> dict:
    """Time both ways of preparing corpora of `sizes_mb` megabytes, alternating, and return the summary."""
    results = {}
    work_dir = Path(tempfile.mkdtemp(prefix="e5-benchmark-corpus-"))
    try:
        for size_mb, rounds in zip(sizes_mb, rounds_per_size):
            corpus_path = work_dir / f"corpus-{size_mb}mb.txt"
            corpus = generate_corpus(corpus_path, size_mb * 1_000_000)
            commands = {
                "ours": [sys.executable, str(REPO_ROOT / "prepare_mlm_data.py"), "--input_files", str(corpus_path)],
                "stock": [sys.executable, str(REPO_ROOT / "benchmarks" / "naive_prepare_mlm_data.py"), "--input_file", str(corpus_path)],
            }
            runs = {"ours": [], "stock": []}
            rows_written = {}
            for round_index in range(rounds):
                order = ["ours", "stock"] if round_index % 2 == 0 else ["stock", "ours"]
                for name in order:
                    output_dir = work_dir / f"output-{name}"
                    shutil.rmtree(output_dir, ignore_errors=True)
                    command = commands[name] + [
                        "--output_dir", str(output_dir),
                        "--validation_split", str(validation_split),
                        "--seed", "42",
                    ]  # fmt: skip
                    measured = run_measured(command, cwd=REPO_ROOT, env=child_environment(threads))
                    logger.info(
                        "data prep %d MB, %s: %.1f s, peak %.0f MiB", size_mb, name, measured["wall_seconds"], measured["peak_rss_bytes"] / 2**20
                    )
                    runs[name].append({"wall_seconds": measured["wall_seconds"], "peak_rss_bytes": measured["peak_rss_bytes"]})
                    if name == "ours":
                        rows_written = count_csv_rows(output_dir)
                    shutil.rmtree(output_dir, ignore_errors=True)
            ours_seconds = median([run["wall_seconds"] for run in runs["ours"]])
            stock_seconds = median([run["wall_seconds"] for run in runs["stock"]])
            results[f"{size_mb}MB"] = {
                "corpus_bytes": corpus["bytes"],
                "corpus_lines": corpus["lines"],
                "ours_rows_written": rows_written,
                "ours_wall_seconds": ours_seconds,
                "stock_wall_seconds": stock_seconds,
                "speedup_ours_over_stock": stock_seconds / ours_seconds,
                "ours_peak_rss_mib": max(run["peak_rss_bytes"] for run in runs["ours"]) / 2**20,
                "stock_peak_rss_mib": max(run["peak_rss_bytes"] for run in runs["stock"]) / 2**20,
                "runs": runs,
            }
            corpus_path.unlink()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return results
