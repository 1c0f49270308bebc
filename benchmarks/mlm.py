"""MLM training throughput, padding share and achieved FLOP/s: our trainer against the stock one.

Stock is what transformers' `run_mlm.py` example does: `BertForMaskedLM` computes its logits at
every token, `DataCollatorForLanguageModeling` masks 15% of them, and a plain `Trainer` trains.
Ours is the `Trainer` subclass of `run_mlm_pretraining.py`, which computes the prediction head
only at the masked positions. Both get the same random initial weights, the same token blocks, the
same collator, batch size, sequence length, optimizer and seed.
"""

import copy
import inspect
import logging
import tempfile
from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch
from datasets import Dataset
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainingArguments,
)

from benchmarks.common import PairedTimings, TrainerProbe, alternate, median, probed_trainers
from e5_pipeline.masked_lm_head import masked_only_mlm_loss, supports_masked_only_head

logger = logging.getLogger(__name__)

MLM_PROBABILITY = 0.15


@dataclass(frozen=True)
class ModelShape:
    """A BERT encoder shape; the vocabulary is always bert-base-uncased's 30,522 WordPiece tokens."""

    name: str
    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int
    intermediate_size: int

    def config(self, vocab_size: int) -> BertConfig:
        return BertConfig(
            vocab_size=vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
        )


MODEL_SHAPES = {
    "6-layer": ModelShape("6-layer 384-wide", 6, 384, 12, 1536),
    "12-layer": ModelShape("12-layer 768-wide (bert-base)", 12, 768, 12, 3072),
}


class StandInMaskedOnlyTrainer(Trainer):
    """A `Trainer` whose loss is `masked_only_mlm_loss`, used only while `run_mlm_pretraining.py` lacks one."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return masked_only_mlm_loss(model, inputs)


def find_our_trainer_class() -> tuple[type[Trainer], str]:
    """Return the `Trainer` subclass defined in `run_mlm_pretraining.py` and a name for the report.

    Falls back to `StandInMaskedOnlyTrainer` (with a WARNING) when the script is missing or defines
    no `Trainer` subclass, so that the benchmark still runs on a partial checkout.
    """
    try:
        import run_mlm_pretraining
    except ImportError as error:
        logger.warning("run_mlm_pretraining.py cannot be imported (%s); timing a stand-in trainer instead", error)
        return StandInMaskedOnlyTrainer, "stand-in (masked_only_mlm_loss)"
    # The class may be defined in the script or imported into it from the package.
    candidates = [
        value
        for value in vars(run_mlm_pretraining).values()
        if inspect.isclass(value) and issubclass(value, Trainer) and value is not Trainer
    ]
    if len(candidates) != 1:
        logger.warning(
            "run_mlm_pretraining.py defines %d Trainer subclasses (%s), expected 1; timing a stand-in trainer instead",
            len(candidates),
            [candidate.__name__ for candidate in candidates],
        )
        return StandInMaskedOnlyTrainer, "stand-in (masked_only_mlm_loss)"
    return candidates[0], f"{candidates[0].__module__}.{candidates[0].__name__}"


def group_into_blocks(token_lists: list[list[int]], block_size: int) -> list[list[int]]:
    """Concatenate token lists and cut them into full blocks, as `group_texts` in `run_mlm.py` does."""
    tokens = list(chain.from_iterable(token_lists))
    return [tokens[start : start + block_size] for start in range(0, len(tokens) - block_size + 1, block_size)]


def build_block_dataset(tokenizer, texts: list[str], block_size: int, min_blocks: int) -> Dataset:
    """Tokenize `texts` and group them into at least `min_blocks` full blocks (repeating the texts if needed)."""
    token_lists = tokenizer(texts, add_special_tokens=True)["input_ids"]
    blocks = group_into_blocks(token_lists, block_size)
    if not blocks:
        raise ValueError(f"the benchmark texts give fewer than {block_size} tokens; add text")
    while len(blocks) < min_blocks:
        blocks = blocks + blocks
    special_ids = set(tokenizer.all_special_ids)
    special_masks = [[int(token in special_ids) for token in block] for block in blocks]
    return Dataset.from_dict({"input_ids": blocks, "special_tokens_mask": special_masks})


def build_line_dataset(tokenizer, texts: list[str], max_length: int) -> Dataset:
    """Tokenize one example per text, truncated to `max_length`, as `run_mlm.py --line_by_line` does."""
    encoded = tokenizer(texts, truncation=True, max_length=max_length, return_special_tokens_mask=True)
    return Dataset.from_dict({"input_ids": encoded["input_ids"], "special_tokens_mask": encoded["special_tokens_mask"]})


def training_arguments(
    output_dir: str, batch_size: int, max_steps: int, seed: int, remove_unused_columns: bool
) -> TrainingArguments:
    return TrainingArguments(
        remove_unused_columns=remove_unused_columns,
        output_dir=output_dir,
        per_device_train_batch_size=batch_size,
        max_steps=max_steps,
        learning_rate=5e-5,
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=seed,
    )


def padding_share(dataloader, max_batches: int) -> dict:
    """Return the share of non-padding tokens over the first `max_batches` batches of `dataloader`."""
    real_tokens = total_tokens = batches = 0
    for batch in dataloader:
        attention_mask = batch.get("attention_mask")
        total_tokens += batch["input_ids"].numel()
        real_tokens += int(attention_mask.sum()) if attention_mask is not None else batch["input_ids"].numel()
        batches += 1
        if batches == max_batches:
            break
    return {"non_padding_share": real_tokens / total_tokens, "batches": batches, "tokens": total_tokens}


def masked_share(collator, dataset: Dataset, batch_size: int, batches: int = 20) -> float:
    """Return the mean share of positions that the collator gives a label, over `batches` random batches."""
    generator = np.random.default_rng(0)
    labelled = total = 0
    for _ in range(batches):
        rows = generator.choice(len(dataset), size=batch_size, replace=False)
        batch = collator([dataset[int(row)] for row in rows])
        labelled += int((batch["labels"] != -100).sum())
        total += batch["labels"].numel()
    return labelled / total


def training_flops_per_step(config: BertConfig, batch_size: int, seq_length: int, head_positions: float) -> float:
    """Estimate the matrix-multiply FLOPs of one training step (forward + backward = 3x forward).

    Counts the encoder's projections, feed-forward and attention products at every token, and the
    prediction head (transform and vocabulary projection) at `head_positions` positions per step.
    Embedding lookups, softmax, layer norms and the optimizer are left out (a few percent).
    """
    hidden, intermediate, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    tokens = batch_size * seq_length
    per_token_per_layer = 8 * hidden * hidden + 4 * hidden * intermediate + 4 * seq_length * hidden
    encoder_forward = config.num_hidden_layers * tokens * per_token_per_layer
    head_forward = head_positions * (2 * hidden * hidden + 2 * hidden * vocab)
    return 3 * (encoder_forward + head_forward)


def run_mlm_benchmark(
    shape: ModelShape,
    tokenizer_path: str,
    texts: list[str],
    batch_size: int,
    seq_length: int,
    warmup_steps: int,
    timed_steps: int,
    rounds: int,
    seed: int = 42,
) -> dict:
    """Time training steps of our MLM trainer and the stock one, alternating, and return the summary."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    config = shape.config(len(tokenizer))
    torch.manual_seed(seed)
    initial_model = BertForMaskedLM(config)
    if not supports_masked_only_head(initial_model):
        raise RuntimeError(f"{type(initial_model).__name__} has no masked-only head; the benchmark needs one")
    our_trainer_class, our_trainer_name = find_our_trainer_class()

    max_steps = warmup_steps + timed_steps
    dataset = build_block_dataset(tokenizer, texts, seq_length, min_blocks=max_steps * batch_size)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=MLM_PROBABILITY)

    def run(trainer_class: type[Trainer]) -> TrainerProbe:
        # As in the scripts: ours keeps `special_tokens_mask` for the collator, while the stock Trainer
        # drops every column outside the model's forward signature, so the collator recomputes it.
        keep_columns = trainer_class is not Trainer
        with tempfile.TemporaryDirectory() as output_dir, probed_trainers() as probes:
            trainer = trainer_class(
                model=copy.deepcopy(initial_model),
                args=training_arguments(output_dir, batch_size, max_steps, seed, remove_unused_columns=not keep_columns),
                train_dataset=dataset,
                data_collator=collator,
                processing_class=tokenizer,
            )
            trainer.train()
        return probes[0]

    logger.info("MLM %s: %s vs stock Trainer, batch %d x %d tokens", shape.name, our_trainer_name, batch_size, seq_length)
    timings: PairedTimings = alternate(rounds, warmup_steps, lambda: run(our_trainer_class), lambda: run(Trainer))

    tokens_per_step = batch_size * seq_length
    result = timings.summary(tokens_per_step, "tokens")
    labelled_share = masked_share(collator, dataset, batch_size)
    our_flops = training_flops_per_step(config, batch_size, seq_length, labelled_share * tokens_per_step)
    stock_flops = training_flops_per_step(config, batch_size, seq_length, tokens_per_step)
    result.update(
        {
            "model": shape.name,
            "ours": our_trainer_name,
            "batch_size": batch_size,
            "seq_length": seq_length,
            "parameters": initial_model.num_parameters(),
            "labelled_share": labelled_share,
            "ours_flops_per_step": our_flops,
            "stock_flops_per_step": stock_flops,
            "ours_flops_per_second": our_flops / median(timings.ours),
            "stock_flops_per_second": stock_flops / median(timings.stock),
        }
    )
    return result


def run_mlm_padding(tokenizer_path: str, texts: list[str], batch_size: int, seq_length: int, max_batches: int) -> dict:
    """Measure the non-padding share of the MLM batches, grouped into blocks and line by line.

    Both trainers use the same collator and datasets, so "ours" and "stock" share the figures. The
    line-by-line row shows what padding costs when a user turns grouping off.
    """
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=MLM_PROBABILITY)
    loaders = {
        "grouped": build_block_dataset(tokenizer, texts, seq_length, min_blocks=batch_size),
        "line_by_line": build_line_dataset(tokenizer, texts, seq_length),
    }
    results = {}
    for mode, dataset in loaders.items():
        dataloader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=True, collate_fn=collator, generator=torch.Generator().manual_seed(0)
        )
        results[mode] = padding_share(dataloader, max_batches)
    return results
