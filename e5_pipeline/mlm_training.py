"""Pieces of the MLM stage that `run_mlm_pretraining.py` keeps out of its `main()`.

The module contains a `Trainer` subclass that computes the masked-only MLM loss, stops on a
non-finite loss and can train a new head alone for its first steps. It also finds checkpoints,
trains WordPiece tokenizers and pads the offsets that whole-word masking reads.
"""

import contextlib
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import BertTokenizerFast, DataCollatorForLanguageModeling, Trainer
from transformers.modeling_outputs import MaskedLMOutput

from e5_pipeline.masked_lm_head import IGNORE_INDEX, masked_only_mlm_loss, supports_masked_only_head

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
# Weight files that `Trainer.save_model` writes, whole or sharded.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# Fraction of all optimizer steps that a newly initialised head trains alone when the user gives no value.
AUTO_HEAD_WARMUP_FRACTION = 0.1
# Peak learning rate of a newly initialised head when the user gives no value: a small random layer needs
# far larger steps than a pretrained encoder to become useful within a short run.
AUTO_NEW_HEAD_LEARNING_RATE = 1e-3
# Prefixes that DistributedDataParallel and torch.compile add to parameter names.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def perplexity(loss: float) -> float:
    """Return exp(loss), infinite rather than an OverflowError for a huge loss (NaN stays NaN)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """Tell whether a `checkpoint-*` folder contains weights and `trainer_state.json`.

    `Trainer` writes `trainer_state.json` after the weights, optimizer and scheduler, so a folder
    without it was cut short by a crash.
    """
    path = Path(path)
    has_weights = any((path / name).is_file() for name in WEIGHT_FILES)
    return has_weights and (path / "trainer_state.json").is_file()


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Return the `checkpoint-<step>` folders of `output_dir`, oldest step first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    folders = [path for path in output_dir.iterdir() if path.is_dir() and CHECKPOINT_PATTERN.match(path.name)]
    return sorted(folders, key=lambda path: int(CHECKPOINT_PATTERN.match(path.name).group(1)))


def latest_complete_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """Return the complete checkpoint with the highest step in `output_dir`, logging incomplete ones it skips."""
    for folder in reversed(list_checkpoints(output_dir)):
        if is_complete_checkpoint(folder):
            return folder
        logger.warning("Skipping %s: it has no weights or no trainer_state.json (an interrupted save).", folder)
    return None


def head_parameter_names(model: nn.Module) -> list[str]:
    """Return the names of `model`'s parameters outside its base encoder (the task head).

    A head weight tied to the input embeddings is listed under its encoder name, so it stays out.
    """
    prefix = f"{model.base_model_prefix}."
    return [name for name, _ in model.named_parameters() if not name.startswith(prefix)]


def new_head_parameter_names(model: nn.Module, missing_keys: Iterable[str]) -> list[str]:
    """Return the names of `model`'s head parameters that the checkpoint lacked.

    An embedding checkpoint such as all-MiniLM-L6-v2 stores only the encoder, so the MLM head's
    weights appear among the missing keys of `from_pretrained(..., output_loading_info=True)`.
    """
    missing_keys = set(missing_keys)
    return sorted(name for name in head_parameter_names(model) if name in missing_keys)


def train_wordpiece_tokenizer(texts: Iterator[str], vocab_size: int, model_max_length: int) -> BertTokenizerFast:
    """Train a lower-casing BERT WordPiece tokenizer with `vocab_size` entries on `texts`.

    NOTE: `tokenizers` (0.23) breaks ties between equally frequent merges in hash order, which
    changes from process to process, so two trainings on the same texts can give different
    vocabularies. A resumed run reloads the tokenizer saved with its checkpoint instead.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    special_tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special_tokens)
    tokenizer.train_from_iterator(texts, trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return BertTokenizerFast(tokenizer_object=tokenizer, model_max_length=model_max_length)


@dataclass
class OffsetPaddingCollator(DataCollatorForLanguageModeling):
    """`DataCollatorForLanguageModeling` that also pads `offset_mapping`, which whole-word masking reads.

    The stock collator pads only token-level keys, so examples of different lengths (line-by-line
    mode) fail to batch once they carry offsets.
    """

    def torch_call(self, examples):
        if "offset_mapping" not in examples[0]:
            return super().torch_call(examples)
        target_length = max(len(example["input_ids"]) for example in examples)
        if self.pad_to_multiple_of:
            target_length = math.ceil(target_length / self.pad_to_multiple_of) * self.pad_to_multiple_of
        padded_examples = []
        for example in examples:
            padding = [[0, 0]] * (target_length - len(example["offset_mapping"]))
            offsets = [list(pair) for pair in example["offset_mapping"]]
            offsets = padding + offsets if self.tokenizer.padding_side == "left" else offsets + padding
            padded_examples.append({**example, "offset_mapping": offsets})
        return super().torch_call(padded_examples)


@contextlib.contextmanager
def _forward_replaced_by(module: nn.Module, forward) -> Iterator[None]:
    """Make `module.forward` call `forward` inside the block, restoring whatever was there before."""
    # Accelerate may already have put an autocast wrapper in the instance dictionary.
    previous = module.__dict__.get("forward")
    module.forward = forward
    try:
        yield
    finally:
        if previous is None:
            del module.forward
        else:
            module.forward = previous


@contextlib.contextmanager
def transformers_load_report_hidden() -> Iterator[None]:
    """Hide the load report (a WARNING table of missing and unexpected weights) that transformers logs.

    transformers 5.25 logs it through the `transformers.modeling_utils` logger. Loading errors,
    size mismatches and conversion errors still raise inside the block.
    """
    report_logger = logging.getLogger("transformers.modeling_utils")
    previous_level = report_logger.level
    report_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        report_logger.setLevel(previous_level)


class MaskedLMTrainer(Trainer):
    """`Trainer` for masked-language modelling with four additions.

    - The loss comes from `masked_only_mlm_loss` (vocabulary logits only at masked positions) for
      the architectures that `supports_masked_only_head` accepts, and from the stock forward for
      the others. On both paths a batch without masked tokens gives a loss of 0, not NaN.
    - A NaN or infinite training loss raises `NonFiniteLossError` before the optimizer step, on
      every process at the same step, naming the step and the learning rate.
    - For its first `head_warmup_steps` optimizer steps only `head_parameter_names` train: the
      other parameters' gradients are dropped after each backward pass, so AdamW skips them (no
      update, no weight decay, their moments stay at zero until the encoder starts).
    - With `head_learning_rate`, the head parameters get that peak learning rate instead of
      `args.learning_rate`, in optimizer groups of their own. The schedule scales both alike.
    """

    def __init__(
        self,
        *args,
        head_parameter_names: list[str] | None = None,
        head_is_new: bool = False,
        head_warmup_steps: int | None = 0,
        head_learning_rate: float | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.use_masked_only_head = supports_masked_only_head(self.model) and self.args.n_gpu <= 1
        if self.use_masked_only_head:
            # `masked_only_mlm_loss` returns a per-batch mean, so Trainer must divide by the accumulation steps.
            # NOTE: the stock loss weights accumulated micro-batches by their masked-token counts instead; the
            # two agree only without gradient accumulation or with equal counts.
            self.loss_is_scaled_for_ga = False
        elif supports_masked_only_head(self.model):
            # DataParallel replicas would all call the forward bound to the original module.
            logger.info("Using the stock MLM loss: the masked-only loss does not support DataParallel (n_gpu > 1).")
        else:
            logger.info(
                "Using the stock MLM loss: masked-only logits are not implemented for %s.", type(self.model).__name__
            )
        self.head_parameter_names = set(head_parameter_names or [])
        self.head_is_new = head_is_new
        self.requested_head_warmup_steps = head_warmup_steps
        self.head_warmup_steps: int | None = None
        self.head_learning_rate = head_learning_rate

    def create_optimizer(self, model=None):
        optimizer_was_built = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if optimizer_was_built and self.head_learning_rate is not None:
            head_parameters = {
                id(parameter)
                for name, parameter in (self.model if model is None else model).named_parameters()
                if _strip_wrapper_prefix(name) in self.head_parameter_names
            }
            # Split every group in two before the first step, while the optimizer has no state yet. The
            # encoder's groups stay first, so the logged learning rate remains the encoder's.
            groups, optimizer.param_groups = optimizer.param_groups, []
            head_groups = []
            for group in groups:
                encoder_part = [parameter for parameter in group["params"] if id(parameter) not in head_parameters]
                head_part = [parameter for parameter in group["params"] if id(parameter) in head_parameters]
                if encoder_part:
                    optimizer.add_param_group({**group, "params": encoder_part})
                if head_part:
                    head_groups.append({**group, "params": head_part, "lr": self.head_learning_rate})
            for group in head_groups:
                optimizer.add_param_group(group)
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.use_masked_only_head:
            labels = inputs.get("labels")
            if labels is None or (labels != IGNORE_INDEX).any():
                return super().compute_loss(
                    model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
                )
            # The stock loss of a batch without masked tokens is NaN (a mean over zero positions). A zero
            # computed from the logits keeps the step, gives every parameter a zero gradient, and still
            # runs the forward that DistributedDataParallel synchronises.
            # NOTE: in evaluation this batch counts as a loss of 0 in Trainer's per-batch mean, which
            # lowers eval_loss slightly; the masked-only path does the same.
            outputs = model(**inputs)
            loss = (outputs.logits.float() * 0).sum()  # (): 0 unless a logit is NaN or infinite
            return (loss, outputs) if return_outputs else loss
        unwrapped_model = self.accelerator.unwrap_model(model)

        def masked_only_forward(**model_inputs):
            with self.accelerator.autocast():
                return MaskedLMOutput(loss=masked_only_mlm_loss(unwrapped_model, model_inputs))

        # DistributedDataParallel synchronises gradients only for work done inside its own forward
        # call, so the masked-only loss runs as the wrapped module's forward rather than beside it.
        with _forward_replaced_by(unwrapped_model, masked_only_forward):
            outputs = model(**inputs)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._raise_if_non_finite(loss)
        if self.state.global_step < self._resolve_head_warmup_steps():
            for name, parameter in model.named_parameters():
                if _strip_wrapper_prefix(name) not in self.head_parameter_names:
                    parameter.grad = None
        return loss

    def _raise_if_non_finite(self, loss: torch.Tensor) -> None:
        # The gradients were already averaged across processes, so every process must stop together.
        non_finite = (~torch.isfinite(loss)).to(torch.int32).reshape(1)
        if self.args.world_size > 1:
            non_finite = self.accelerator.reduce(non_finite, reduction="sum")
        if non_finite.item():
            step = self.state.global_step + 1
            raise NonFiniteLossError(
                f"The training loss became {loss.item()} at step {step} (learning rate "
                f"{self._get_learning_rate():.3g}); training stopped and no final model was saved. Likely causes: "
                "a learning rate too high for this model (lower --learning_rate or raise --warmup_steps), an fp16 "
                "overflow (use --bf16 or drop --fp16), or bad training data (look at the rows of this step). "
                "Then resume from the last checkpoint, or start over with --overwrite_output."
            )

    def _resolve_head_warmup_steps(self) -> int:
        if self.head_warmup_steps is None:
            self.head_warmup_steps = resolve_head_warmup_steps(
                self.requested_head_warmup_steps, self.head_is_new, self.state.max_steps
            )
        return self.head_warmup_steps


def resolve_head_warmup_steps(requested: int | None, head_is_new: bool, max_steps: int) -> int:
    """Return the number of head-only steps: `requested`, or an automatic value when it is None.

    The automatic value is 10% of all optimizer steps (at least 1) for a newly initialised head and
    0 for a head loaded from the checkpoint.
    """
    if requested is not None:
        steps = requested
    elif head_is_new:
        steps = max(1, round(AUTO_HEAD_WARMUP_FRACTION * max_steps))
        logger.warning(
            "The MLM head is newly initialised: training it alone, encoder frozen, for its first %d of %d steps "
            "(--head_warmup_steps unset, so %d%% of all steps). Pass --head_warmup_steps N to choose.",
            steps,
            max_steps,
            round(100 * AUTO_HEAD_WARMUP_FRACTION),
        )
    else:
        steps = 0
    if steps > 0 and not head_is_new:
        logger.info("Training only the MLM head for the first %d steps (--head_warmup_steps).", steps)
    return steps


def resolve_head_learning_rate(requested: float | None, head_is_new: bool) -> float | None:
    """Return the head's own peak learning rate: `requested`, else `AUTO_NEW_HEAD_LEARNING_RATE` for a new head.

    None means the head shares the encoder's learning rate.
    """
    if requested is not None:
        return requested
    if head_is_new:
        logger.info(
            "The new MLM head trains at a peak learning rate of %g (--head_learning_rate unset).",
            AUTO_NEW_HEAD_LEARNING_RATE,
        )
        return AUTO_NEW_HEAD_LEARNING_RATE
    return None


def _strip_wrapper_prefix(name: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                stripped = True
    return name
