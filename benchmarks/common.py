"""Timing and memory tools shared by the benchmark parts.

Every comparison is a ratio of two measurements taken in the same run, with the two variants
alternated (ours, stock, stock, ours, ...) so that slow drifts in machine load fall on both.
"""

import contextlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch
import transformers
from transformers import Trainer, TrainerCallback

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


class StepTimer(TrainerCallback):
    """Record the wall-clock time between consecutive optimizer steps of a `Trainer`.

    `Trainer` fetches and collates the next batch before `on_step_begin`, so the interval from one
    `on_step_end` to the next covers the whole step: data loading, collation, forward, backward,
    gradient clipping, optimizer and scheduler.
    """

    def __init__(self):
        self.step_end_times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.step_end_times.append(time.perf_counter())

    def step_seconds(self, warmup_steps: int) -> list[float]:
        """Return the durations of the steps after the first `warmup_steps` (at least one is skipped)."""
        intervals = [later - earlier for earlier, later in zip(self.step_end_times, self.step_end_times[1:])]
        # intervals[i] is the duration of step i + 2, so skipping warm-up steps 1..w drops w - 1 intervals.
        return intervals[max(warmup_steps - 1, 0) :]


class PaddingCounter:
    """Wrap a data collator and count real and padding tokens in the batches it returns.

    Every tensor whose key ends in `attention_mask` counts (sentence-transformers batches hold one
    per text column). A batch without one is unpadded, so all its `input_ids` count as real.
    Attribute reads go to the wrapped collator, because trainers read settings from it.
    """

    def __init__(self, collator):
        self.collator = collator
        self.real_tokens = 0
        self.total_tokens = 0
        self.batches = 0

    def __call__(self, examples):
        batch = self.collator(examples)
        self.batches += 1
        masks = [value for key, value in batch.items() if key.endswith("attention_mask")]
        if masks:
            self.real_tokens += sum(int(mask.sum()) for mask in masks)
            self.total_tokens += sum(mask.numel() for mask in masks)
        elif "input_ids" in batch:
            self.real_tokens += batch["input_ids"].numel()
            self.total_tokens += batch["input_ids"].numel()
        return batch

    def __getattr__(self, name):
        return getattr(self.collator, name)

    def non_padding_share(self) -> float:
        return self.real_tokens / self.total_tokens if self.total_tokens else float("nan")


@dataclass
class TrainerProbe:
    """The step timer and padding counter attached to one `Trainer`."""

    timer: StepTimer
    padding: PaddingCounter


@contextlib.contextmanager
def probed_trainers() -> Iterator[list[TrainerProbe]]:
    """Attach a `TrainerProbe` to every `Trainer` built inside the block, and yield the probes.

    The training code under test (our scripts, `SentenceTransformer.fit`) builds its `Trainer`
    itself, so the probe joins at construction instead of through an argument.
    """
    probes: list[TrainerProbe] = []
    original_init = Trainer.__init__

    def init_with_probe(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        probe = TrainerProbe(StepTimer(), PaddingCounter(self.data_collator))
        self.add_callback(probe.timer)
        self.data_collator = probe.padding
        probes.append(probe)

    Trainer.__init__ = init_with_probe
    try:
        yield probes
    finally:
        Trainer.__init__ = original_init


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class PairedTimings:
    """Per-step seconds and non-padding shares of the two variants of one comparison, over alternating rounds."""

    ours: list[float] = field(default_factory=list)
    stock: list[float] = field(default_factory=list)
    ours_non_padding_shares: list[float] = field(default_factory=list)
    stock_non_padding_shares: list[float] = field(default_factory=list)
    ours_real_tokens_per_batch: list[float] = field(default_factory=list)
    stock_real_tokens_per_batch: list[float] = field(default_factory=list)

    def summary(self, work_per_step: float, unit: str) -> dict:
        """Summarise both variants as medians and the ratio ours/stock of their throughput in `unit`/s."""
        ours_median, stock_median = median(self.ours), median(self.stock)
        return {
            f"ours_{unit}_per_second": work_per_step / ours_median,
            f"stock_{unit}_per_second": work_per_step / stock_median,
            "ratio_ours_over_stock": stock_median / ours_median,
            "ours_median_step_seconds": ours_median,
            "stock_median_step_seconds": stock_median,
            "ours_non_padding_share": median(self.ours_non_padding_shares),
            "stock_non_padding_share": median(self.stock_non_padding_shares),
            "ours_real_tokens_per_batch": median(self.ours_real_tokens_per_batch),
            "stock_real_tokens_per_batch": median(self.stock_real_tokens_per_batch),
            "ours_step_seconds": self.ours,
            "stock_step_seconds": self.stock,
        }


def alternate(
    rounds: int, warmup_steps: int, run_ours: Callable[[], TrainerProbe], run_stock: Callable[[], TrainerProbe]
) -> PairedTimings:
    """Run both variants `rounds` times each in the order ours, stock, stock, ours, ours, stock, ..."""
    timings = PairedTimings()
    for round_index in range(rounds):
        order = [("ours", run_ours), ("stock", run_stock)]
        if round_index % 2 == 1:
            order.reverse()
        for name, run in order:
            probe = run()
            seconds = probe.timer.step_seconds(warmup_steps)
            logger.info("round %d, %s: median step %.3f s over %d steps", round_index + 1, name, median(seconds), len(seconds))
            getattr(timings, name).extend(seconds)
            getattr(timings, f"{name}_non_padding_shares").append(probe.padding.non_padding_share())
            getattr(timings, f"{name}_real_tokens_per_batch").append(probe.padding.real_tokens / max(probe.padding.batches, 1))
    return timings


def measure_matmul_peak(size: int = 2048, repeats: int = 20) -> dict:
    """Measure the fp32 matrix-multiply rate of this process's threads, as the FLOP/s ceiling.

    The peak is the fastest of `repeats` timed products after two warm-up products, because other
    processes can only slow a product down, never speed it up.
    """
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(size, size, generator=generator)  # (size, size)
    right = torch.randn(size, size, generator=generator)  # (size, size)
    flops = 2 * size**3
    for _ in range(2):
        torch.matmul(left, right)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(left, right)
        seconds.append(time.perf_counter() - start)
    return {
        "matrix_size": size,
        "peak_flops_per_second": flops / min(seconds),
        "median_flops_per_second": flops / median(seconds),
    }


class RssSampler:
    """Sample the resident memory of a process and all its children on a background thread."""

    def __init__(self, pid: int, interval_seconds: float = 0.02):
        self.process = psutil.Process(pid)
        self.interval_seconds = interval_seconds
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def current_bytes(self) -> int:
        total = 0
        with contextlib.suppress(psutil.Error):
            processes = [self.process, *self.process.children(recursive=True)]
            for process in processes:
                with contextlib.suppress(psutil.Error):
                    total += process.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self.current_bytes())
            self._stop.wait(self.interval_seconds)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


def run_measured(command: list[str], cwd: Path | None = None, env: dict | None = None) -> dict:
    """Run `command` as a child process; return its wall time, peak RSS (sampled, with its children) and output.

    Raises RuntimeError with the tail of the output when the command fails.
    """
    logger.info("running: %s", " ".join(command))
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    with RssSampler(process.pid) as sampler:
        output, _ = process.communicate()
    wall_seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"command failed with exit code {process.returncode}: {' '.join(command)}\n{output[-3000:]}")
    return {"wall_seconds": wall_seconds, "peak_rss_bytes": sampler.peak_bytes, "output": output}


def last_json_line(output: str) -> dict:
    """Parse the last line of `output` that is a JSON object (how child measurements report back)."""
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON result line in the child's output:\n{output[-3000:]}")


def child_environment(threads: int | None = None) -> dict:
    """Return an environment for child processes: offline, quiet tokenizers, an optional thread count."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def describe_machine() -> dict:
    """Collect what a reader needs to judge the numbers: CPU, cores, memory, load and library versions."""
    import datasets
    import sentence_transformers

    cpu_name = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_name = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu_name,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "datasets": datasets.__version__,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
