"""Fine-tune a sentence-transformers model on query/positive-passage pairs with in-batch negatives.

Example:

    python run_contrastive_finetuning.py \
        --model_name_or_path mlm-output/sentence-transformer-format \
        --train_file pairs/train.csv --validation_file pairs/validation.csv \
        --eval_corpus_file cranfield/corpus.jsonl \
        --prefix_query "query: " --prefix_passage "passage: " \
        --output_dir contrastive-output --num_train_epochs 3 --per_device_train_batch_size 32

Writes to --output_dir:
- the final model, a sentence-transformers folder whose prompts "query" and "passage" are the two
  prefixes;
- `eval_results.json`, the retrieval metrics on the validation pairs before and after training,
  with counts;
- `checkpoints/checkpoint-<step>` folders for resuming;
- with --save_best_model, the best model of the evaluations during training in `best/`.

Training runs `SentenceTransformer.fit` with a no-duplicates batch sampler and
MultipleNegativesRankingLoss (or its cached variant with --mini_batch_size). `fit` builds a
SentenceTransformerTrainer underneath; the comments at `EveryRowNoDuplicatesDataLoader` and
`train` say where this script works around it.
"""

import functools
import json
import logging
import math
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from unittest.mock import patch

import sentence_transformers
import torch
import transformers
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer import fit_mixin
from sentence_transformers.sentence_transformer.datasets import NoDuplicatesDataLoader
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from sentence_transformers.sentence_transformer.losses import (
    CachedMultipleNegativesRankingLoss,
    MultipleNegativesRankingLoss,
)
from sentence_transformers.sentence_transformer.readers import InputExample
from torch import nn
from transformers import get_linear_schedule_with_warmup

from e5_pipeline.cli import build_argument_parser
from e5_pipeline.csv_io import load_csv_dataset
from e5_pipeline.ir_evaluation import (
    DISTRACTOR_FILE_SUFFIXES,
    build_retrieval_evaluation_data,
    load_distractor_passages,
)
from e5_pipeline.logging_utils import run_script, setup_logging, write_json
from e5_pipeline.models import load_sentence_transformer
from e5_pipeline.prefixes import add_prefix

logger = logging.getLogger(__name__)

EVAL_STRATEGIES = ("no", "steps", "epoch")
# Metrics kept in eval_results.json, as named by InformationRetrievalEvaluator without the
# score-function prefix ("cosine_ndcg@10" is stored as "ndcg@10").
REPORTED_METRICS = ("ndcg@10", "mrr@10", "recall@10", "recall@100", "map@100")

@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={
            "help": "Sentence-transformers folder or model id to start from. A plain transformers folder is "
            "wrapped as Transformer + mean Pooling, with a WARNING."
        }
    )
    prefix_query: str = field(
        default="",
        metadata={"help": "Text put before every query, in training and evaluation (E5 uses 'query: '). Default: none."},
    )
    prefix_passage: str = field(
        default="",
        metadata={
            "help": "Text put before every passage, in training and evaluation (E5 uses 'passage: '). Default: none."
        },
    )
    max_seq_length: int | None = field(
        default=None,
        metadata={
            "help": "Maximum input length in tokens; longer texts are truncated. Default: the model's own "
            "limit (512 for a plain transformers folder)."
        },
    )


@dataclass
class DataArguments:
    train_file: str = field(metadata={"help": "CSV file of training pairs (see --query_column, --positive_column)."})
    validation_file: str | None = field(
        default=None,
        metadata={
            "help": "CSV file of validation pairs for retrieval evaluation before, during and after training. "
            "Default: none, so no evaluation."
        },
    )
    query_column: str = field(default="query", metadata={"help": "CSV column that holds the queries."})
    positive_column: str = field(default="positive", metadata={"help": "CSV column that holds the positive passages."})
    max_train_samples: int | None = field(
        default=None,
        metadata={"help": "Train on the first N rows of --train_file only (for quick runs). Default: all rows."},
    )
    eval_corpus_file: str | None = field(
        default=None,
        metadata={
            "help": "Passages added to the evaluation corpus as distractors, so that validation scores "
            "reflect search over a real collection: a BEIR corpus.jsonl, a CSV file (column "
            "--eval_corpus_column) or a .txt file with one passage per line. Default: none, so the "
            "corpus is only the validation positives."
        },
    )
    eval_corpus_column: str = field(
        default="text", metadata={"help": "Column of --eval_corpus_file that holds the passages, when it is a CSV."}
    )


@dataclass
class FinetuningArguments:
    output_dir: str = field(metadata={"help": "Folder for the final model, eval_results.json and checkpoints."})
    num_train_epochs: int = field(default=1, metadata={"help": "Number of passes over the training pairs."})
    per_device_train_batch_size: int = field(
        default=32,
        metadata={
            "help": "Pairs per training batch. Each query is scored against every passage of its batch, so "
            "larger batches give more negatives."
        },
    )
    learning_rate: float = field(
        default=2e-5,
        metadata={
            "help": "Peak learning rate of AdamW. A few thousand pairs may need more: on 1,084 Cranfield pairs, "
            "all-MiniLM-L6-v2 gained most at 2e-4, the default of run_pipeline.sh."
        },
    )
    weight_decay: float = field(
        default=0.01, metadata={"help": "AdamW weight decay, not applied to biases and LayerNorm weights."}
    )
    warmup_ratio: float = field(
        default=0.1,
        metadata={
            "help": "Fraction of all training steps during which the learning rate rises linearly from 0 to "
            "--learning_rate; it then decays linearly to 0 at the last step."
        },
    )
    loss_scale: float = field(
        default=20.0,
        metadata={
            "help": "Inverse temperature of the contrastive loss: cosine similarities are multiplied by it "
            "before the softmax. The default 20 is temperature 0.05; E5 used temperature 0.01, that is 100."
        },
    )
    mini_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "When set, use CachedMultipleNegativesRankingLoss (gradient caching): embed each batch "
            "in mini-batches of this many pairs, so that a batch of thousands of pairs needs about the "
            "activation memory of one mini-batch. The loss and gradients are the same as without it. "
            "Default: none, the plain MultipleNegativesRankingLoss."
        },
    )
    eval_strategy: str | None = field(
        default=None,
        metadata={
            "help": "When to evaluate during training: 'no', 'steps' (every --eval_steps steps and at the end "
            "of each epoch) or 'epoch'; 'steps' and 'epoch' need --validation_file. The starting and the "
            "final model are evaluated whenever --validation_file is set. Default: 'epoch' with "
            "--validation_file, 'no' without it.",
            "choices": list(EVAL_STRATEGIES),
        },
    )
    eval_steps: int | None = field(
        default=None,
        metadata={"help": "Steps between evaluations with --eval_strategy steps; ignored, with a WARNING, otherwise."},
    )
    use_amp: bool = field(
        default=False,
        metadata={"help": "Train with float16 automatic mixed precision. CUDA only: on a CPU it is turned off with a WARNING."},
    )
    checkpoint_save_steps: int = field(
        default=500,
        metadata={
            "help": "Save a resumable checkpoint (model, optimizer, scheduler) to OUTPUT_DIR/checkpoints every "
            "N steps. A checkpoint of the last step is always saved; 0 saves only that one."
        },
    )
    checkpoint_save_total_limit: int = field(
        default=2, metadata={"help": "Keep only the newest N checkpoints; 0 keeps all of them."}
    )
    save_best_model: bool = field(
        default=False,
        metadata={
            "help": "Also save the model of the best evaluation during training (by nDCG@10) to "
            "OUTPUT_DIR/best. Needs --validation_file and an --eval_strategy other than 'no'."
        },
    )
    resume_from_checkpoint: bool = field(
        default=False,
        metadata={"help": "Continue from the newest checkpoint in OUTPUT_DIR/checkpoints, with the same arguments."},
    )
    seed: int = field(
        default=42, metadata={"help": "Seed of the training-row order, the batch sampler, dropout and initialisation."}
    )


def parse_arguments(args: list[str] | None) -> tuple[ModelArguments, DataArguments, FinetuningArguments]:
    """Parse the command line and check it before any file is read.

    Sets the default --eval_strategy: 'epoch' when --validation_file is given, 'no' otherwise.
    """
    parser = build_argument_parser((ModelArguments, DataArguments, FinetuningArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=args)

    for flag, path in (
        ("--train_file", data_args.train_file),
        ("--validation_file", data_args.validation_file),
        ("--eval_corpus_file", data_args.eval_corpus_file),
    ):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {path!r} not found.")
    if data_args.eval_corpus_file and Path(data_args.eval_corpus_file).suffix.lower() not in DISTRACTOR_FILE_SUFFIXES:
        raise ValueError(
            f"--eval_corpus_file {data_args.eval_corpus_file!r} must end with one of "
            f"{', '.join(DISTRACTOR_FILE_SUFFIXES)}."
        )

    positive_flags = {
        "--num_train_epochs": training_args.num_train_epochs,
        "--per_device_train_batch_size": training_args.per_device_train_batch_size,
        "--max_train_samples": data_args.max_train_samples,
        "--max_seq_length": model_args.max_seq_length,
        "--mini_batch_size": training_args.mini_batch_size,
        "--eval_steps": training_args.eval_steps,
        "--loss_scale": training_args.loss_scale,
        "--learning_rate": training_args.learning_rate,
    }
    for flag, value in positive_flags.items():
        if value is not None and value <= 0:
            raise ValueError(f"{flag} must be positive, got {value!r}.")
    if not 0.0 <= training_args.warmup_ratio < 1.0:
        raise ValueError(f"--warmup_ratio must be in [0, 1), got {training_args.warmup_ratio!r}.")
    if training_args.checkpoint_save_steps < 0 or training_args.checkpoint_save_total_limit < 0:
        raise ValueError("--checkpoint_save_steps and --checkpoint_save_total_limit must be 0 or more.")

    if training_args.eval_strategy is None:
        training_args.eval_strategy = "epoch" if data_args.validation_file is not None else "no"
    elif training_args.eval_strategy != "no" and data_args.validation_file is None:
        raise ValueError(
            f"--eval_strategy {training_args.eval_strategy!r} needs --validation_file; pass one, or leave out "
            "--eval_strategy to train without evaluation."
        )
    if training_args.eval_strategy == "steps" and training_args.eval_steps is None:
        raise ValueError("--eval_strategy steps needs --eval_steps.")
    if training_args.eval_steps is not None and training_args.eval_strategy != "steps":
        logger.warning(
            "--eval_steps %d is ignored because --eval_strategy is %r; pass --eval_strategy steps to use it.",
            training_args.eval_steps,
            training_args.eval_strategy,
        )
    mini_batch_size, batch_size = training_args.mini_batch_size, training_args.per_device_train_batch_size
    if mini_batch_size is not None and mini_batch_size > batch_size:
        logger.warning(
            "--mini_batch_size %d is larger than --per_device_train_batch_size %d, so each batch is embedded in one "
            "piece and gradient caching saves no memory; use a --mini_batch_size below %d.",
            mini_batch_size,
            batch_size,
            batch_size,
        )
    if training_args.save_best_model and training_args.eval_strategy == "no":
        raise ValueError("--save_best_model needs evaluations during training; set --eval_strategy steps or epoch.")
    if data_args.eval_corpus_file and data_args.validation_file is None:
        raise ValueError("--eval_corpus_file adds distractors to the validation corpus, so it needs --validation_file.")
    return model_args, data_args, training_args


def check_checkpoints(checkpoint_dir: Path, resume: bool) -> None:
    """Reject resuming without a checkpoint, and starting over on top of an earlier run's checkpoints."""
    checkpoints = sorted(checkpoint_dir.glob("checkpoint-*")) if checkpoint_dir.is_dir() else []
    if resume and not checkpoints:
        raise FileNotFoundError(
            f"--resume_from_checkpoint: no checkpoint-<step> folder in {str(checkpoint_dir)!r}. "
            "Train without --resume_from_checkpoint first."
        )
    if not resume and checkpoints:
        raise ValueError(
            f"{str(checkpoint_dir)!r} contains checkpoints of an earlier run ({checkpoints[-1].name}, ...). "
            "Pass --resume_from_checkpoint to continue it, or use a new --output_dir."
        )


def load_pairs(path: str, query_column: str, positive_column: str, split: str) -> tuple[list[str], list[str]]:
    """Read the query and positive columns of a pairs CSV, leaving out rows with an empty text."""
    column_flags = {query_column: "--query_column", positive_column: "--positive_column"}
    dataset = load_csv_dataset({split: path}, [query_column, positive_column], column_flags=column_flags)[split]
    queries, positives = dataset[query_column], dataset[positive_column]
    kept = [index for index, pair in enumerate(zip(queries, positives)) if pair[0].strip() and pair[1].strip()]
    if len(kept) < len(queries):
        logger.warning(
            "%s: left out %d of %d rows with an empty %r or %r.",
            path,
            len(queries) - len(kept),
            len(queries),
            query_column,
            positive_column,
        )
    return [queries[index] for index in kept], [positives[index] for index in kept]


def prefix_pairs(
    queries: list[str], positives: list[str], prefix_query: str, prefix_passage: str, split: str
) -> tuple[list[str], list[str]]:
    """Add the prefixes to one split, logging how many texts already had them."""
    prefixed_queries, queries_with_prefix = add_prefix(queries, prefix_query)
    prefixed_positives, positives_with_prefix = add_prefix(positives, prefix_passage)
    if queries_with_prefix or positives_with_prefix:
        logger.info(
            "%s: %d of %d queries already started with %r and %d of %d passages with %r, so those were left unchanged.",
            split,
            queries_with_prefix,
            len(queries),
            prefix_query,
            positives_with_prefix,
            len(positives),
            prefix_passage,
        )
    return prefixed_queries, prefixed_positives


def check_batch_size(queries: list[str], positives: list[str], batch_size: int) -> None:
    """Fail before training when no-duplicates batching cannot fill a batch of `batch_size` pairs.

    NoDuplicatesDataLoader yields nothing with fewer rows than one batch, and with fewer distinct
    queries or passages than the batch size it never completes a batch (it loops forever).

    Raises:
        ValueError: with the counts and the largest batch size that the data allows.
    """
    num_queries, num_passages = len(set(queries)), len(set(positives))
    largest = min(len(queries), num_queries, num_passages)
    if largest >= batch_size:
        return
    if len(queries) < batch_size:
        problem = f"the training data has {len(queries)} rows, fewer than one batch"
    else:
        problem = (
            f"the training data has {num_queries} distinct queries and {num_passages} distinct passages, "
            "but a batch may not contain the same text twice"
        )
    if largest < 2:
        fix = "Add training pairs: in-batch negatives need at least 2 distinct queries and 2 distinct passages."
    else:
        fix = f"Use --per_device_train_batch_size {largest} or less, or add training pairs."
    raise ValueError(f"--per_device_train_batch_size {batch_size} is too large: {problem}. {fix}")


def warn_about_repeated_texts(queries: list[str], positives: list[str], batch_size: int) -> None:
    """Warn when a text repeats in more rows than an epoch has batches, so some rows must wait.

    A batch never contains the same text twice, so a query with k rows needs k batches. The trainer
    stops an epoch after ceil(rows / batch size) batches, and rows that did not fit wait for the
    next epoch (the order is reshuffled every epoch).
    """
    batches_per_epoch = math.ceil(len(queries) / batch_size)
    counts = Counter(queries) + Counter(positives)
    rows_that_wait = sum(count - batches_per_epoch for count in counts.values() if count > batches_per_epoch)
    if rows_that_wait:
        text, count = counts.most_common(1)[0]
        logger.warning(
            "%r is in %d training rows but an epoch has %d batches, and a batch contains each text at most once, so at least "
            "%d rows cannot train in each epoch. Lower --per_device_train_batch_size to %d or less to avoid that.",
            text[:80],
            count,
            batches_per_epoch,
            rows_that_wait,
            max(1, len(queries) // count),
        )
    # NOTE: this count is a lower bound. The sampler fills batches greedily, so when many texts
    # repeat, a few more rows can miss the last batch of an epoch.


class EveryRowNoDuplicatesDataLoader(NoDuplicatesDataLoader):
    """NoDuplicatesDataLoader whose single pass yields every row exactly once.

    `fit` iterates its loader once to copy the rows into a `datasets.Dataset`, and then lets the
    trainer batch that copy with its own no-duplicates sampler (chosen because the loader is a
    NoDuplicatesDataLoader). The stock loader's pass yields only whole batches, skips rows that
    clash with their batch and repeats others, so rows would never train. This pass yields all rows
    in `seed`-shuffled order; the trainer's sampler then builds the duplicate-free batches, keeping
    the last, partial one.
    """

    def __init__(self, train_examples: list[InputExample], batch_size: int, seed: int) -> None:
        # The parent's __init__ would shuffle with the global `random` state; this loader uses its own seed.
        self.batch_size = batch_size
        self.collate_fn = None
        self.train_examples = list(train_examples)
        # A fixed order per seed, so that the same --seed gives the same batches.
        random.Random(seed).shuffle(self.train_examples)

    def __iter__(self):
        for start in range(0, len(self.train_examples), self.batch_size):
            batch = self.train_examples[start : start + self.batch_size]
            yield self.collate_fn(batch) if self.collate_fn is not None else batch

    def __len__(self) -> int:
        return math.ceil(len(self.train_examples) / self.batch_size)


def build_train_objective(
    model: SentenceTransformer,
    train_examples: list[InputExample],
    batch_size: int,
    loss_scale: float = 20.0,
    mini_batch_size: int | None = None,
    seed: int = 42,
) -> tuple[EveryRowNoDuplicatesDataLoader, nn.Module]:
    """Build the (data loader, loss) pair that `model.fit` takes as its training objective."""
    loader = EveryRowNoDuplicatesDataLoader(train_examples, batch_size=batch_size, seed=seed)
    if mini_batch_size is None:
        loss = MultipleNegativesRankingLoss(model, scale=loss_scale)
    else:
        loss = CachedMultipleNegativesRankingLoss(model, scale=loss_scale, mini_batch_size=mini_batch_size)
    return loader, loss


def build_evaluator(
    queries: list[str], positives: list[str], distractors: list[str]
) -> tuple[InformationRetrievalEvaluator, dict[str, int]]:
    """Build the retrieval evaluator over already prefixed texts, and return it with its sizes."""
    data = build_retrieval_evaluation_data(queries, positives, distractors)
    evaluator = InformationRetrievalEvaluator(
        queries=data.queries,
        corpus=data.corpus,
        relevant_docs=data.relevant_docs,
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[1, 10],
        precision_recall_at_k=[10, 100],
        map_at_k=[100],
        name="validation",
        # The texts carry their prefixes already. An empty prompt (not None) stops encode_query and
        # encode_document from adding the model's "query"/"passage" prompts a second time.
        query_prompt="",
        corpus_prompt="",
    )
    sizes = {"queries": len(data.queries), "corpus": len(data.corpus), "distractors": data.num_distractors}
    return evaluator, sizes


def evaluate(evaluator: InformationRetrievalEvaluator, model: SentenceTransformer, when: str) -> dict[str, float]:
    """Run the evaluator and return REPORTED_METRICS for its primary score function."""
    metrics = evaluator(model)
    # The primary metric is named "<evaluator name>_<score function>_ndcg@10", and the other
    # metrics of the same score function share everything before "ndcg@10".
    score_prefix = evaluator.primary_metric.removesuffix("ndcg@10")
    reported = {name: float(metrics[score_prefix + name]) for name in REPORTED_METRICS}
    logger.info("Validation %s: %s", when, ", ".join(f"{name} {value:.4f}" for name, value in reported.items()))
    return reported


def train(
    model: SentenceTransformer,
    loader: EveryRowNoDuplicatesDataLoader,
    loss: nn.Module,
    evaluator: InformationRetrievalEvaluator | None,
    training_args: FinetuningArguments,
    use_amp: bool,
) -> None:
    """Run `model.fit`, working around the parts of it that do not fit this script.

    - `fit` sizes its linear schedule for floor(rows / batch size) steps an epoch, but the trainer
      runs ceil(rows / batch size), so the last steps would train at learning rate 0. `fit` looks
      the scheduler up as `self._get_scheduler`, so an instance attribute supplies one sized for the
      real step count, and is removed afterwards.
    - Without a checkpoint path `fit` creates `checkpoints/model` in the working directory, so the
      checkpoint path is always OUTPUT_DIR/checkpoints.
    - `fit` takes no seed and builds its trainer's arguments with the default seed 42, which
      drives dropout and batch sampling. For this call only, the arguments class that `fit` looks
      up in its module is replaced by one whose seed is --seed.
    - With an evaluator `fit` saves only the best model (to its output path) and never the final
      one, so the output path is OUTPUT_DIR/best (only with --save_best_model) and the caller saves
      the final model itself.
    """
    output_dir = Path(training_args.output_dir)
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * training_args.num_train_epochs
    warmup_steps = math.ceil(training_args.warmup_ratio * total_steps)
    logger.info(
        "Training: %d rows, batches of %d, %d steps per epoch, %d epochs, %d steps, %d warmup steps.",
        len(loader.train_examples),
        loader.batch_size,
        steps_per_epoch,
        training_args.num_train_epochs,
        total_steps,
        warmup_steps,
    )

    # `fit` passes these keyword arguments; `warmup_steps` is the value computed above.
    def linear_schedule_over_all_steps(optimizer, scheduler, warmup_steps, t_total):
        return get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)

    model._get_scheduler = linear_schedule_over_all_steps
    seeded_arguments = functools.partial(
        fit_mixin.SentenceTransformerTrainingArguments, seed=training_args.seed, data_seed=training_args.seed
    )
    try:
        with patch.object(fit_mixin, "SentenceTransformerTrainingArguments", seeded_arguments):
            model.fit(
                train_objectives=[(loader, loss)],
                evaluator=evaluator if training_args.eval_strategy != "no" else None,
                epochs=training_args.num_train_epochs,
                warmup_steps=warmup_steps,
                optimizer_params={"lr": training_args.learning_rate},
                weight_decay=training_args.weight_decay,
                evaluation_steps=training_args.eval_steps if training_args.eval_strategy == "steps" else 0,
                output_path=str(output_dir / "best") if training_args.save_best_model else None,
                save_best_model=training_args.save_best_model,
                use_amp=use_amp,
                checkpoint_path=str(output_dir / "checkpoints"),
                checkpoint_save_steps=training_args.checkpoint_save_steps,
                checkpoint_save_total_limit=training_args.checkpoint_save_total_limit,
                resume_from_checkpoint=training_args.resume_from_checkpoint,
            )
    finally:
        del model._get_scheduler


def main(args: list[str] | None = None) -> None:
    # 1. Logging, arguments and seeds.
    setup_logging()
    model_args, data_args, training_args = parse_arguments(args)
    output_dir = Path(training_args.output_dir)
    check_checkpoints(output_dir / "checkpoints", training_args.resume_from_checkpoint)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    use_amp = training_args.use_amp
    if use_amp and device != "cuda":
        logger.warning("--use_amp needs CUDA; training on the CPU in float32 instead (use_amp True -> False).")
        use_amp = False
    transformers.set_seed(training_args.seed)
    logger.info(
        "torch %s, transformers %s, sentence-transformers %s, device %s, precision %s",
        torch.__version__,
        transformers.__version__,
        sentence_transformers.__version__,
        device,
        "float16 AMP" if use_amp else "float32",
    )
    for arguments in (model_args, data_args, training_args):
        logger.info("%s %s", type(arguments).__name__, json.dumps(asdict(arguments)))

    # 2. Training pairs, prefixed once here for training and evaluation alike.
    train_queries, train_positives = load_pairs(
        data_args.train_file, data_args.query_column, data_args.positive_column, "train"
    )
    if data_args.max_train_samples is not None and data_args.max_train_samples < len(train_queries):
        logger.info("--max_train_samples: keeping the first %d of %d rows.", data_args.max_train_samples, len(train_queries))
        train_queries = train_queries[: data_args.max_train_samples]
        train_positives = train_positives[: data_args.max_train_samples]
    train_queries, train_positives = prefix_pairs(
        train_queries, train_positives, model_args.prefix_query, model_args.prefix_passage, "train"
    )
    logger.info(
        "Training pairs: %d rows, %d distinct queries, %d distinct passages.",
        len(train_queries),
        len(set(train_queries)),
        len(set(train_positives)),
    )
    check_batch_size(train_queries, train_positives, training_args.per_device_train_batch_size)
    warn_about_repeated_texts(train_queries, train_positives, training_args.per_device_train_batch_size)

    # 3. Validation pairs and distractor passages.
    evaluator, evaluation_sizes = None, None
    if data_args.validation_file is not None:
        validation_queries, validation_positives = prefix_pairs(
            *load_pairs(data_args.validation_file, data_args.query_column, data_args.positive_column, "validation"),
            model_args.prefix_query,
            model_args.prefix_passage,
            "validation",
        )
        distractors = []
        if data_args.eval_corpus_file is not None:
            distractors, _ = add_prefix(
                load_distractor_passages(
                    data_args.eval_corpus_file, data_args.eval_corpus_column, column_flag="--eval_corpus_column"
                ),
                model_args.prefix_passage,
            )
        evaluator, evaluation_sizes = build_evaluator(validation_queries, validation_positives, distractors)
        logger.info(
            "Validation: %d pairs, %d distinct queries, a corpus of %d passages (%d of them distractors).",
            len(validation_queries),
            evaluation_sizes["queries"],
            evaluation_sizes["corpus"],
            evaluation_sizes["distractors"],
        )

    # 4. Model, with the prefixes recorded as its prompts, so every save carries them and
    #    `encode(..., prompt_name="query")` applies the prefix after loading.
    model = load_sentence_transformer(model_args.model_name_or_path, model_args.max_seq_length, device=device)
    if model.default_prompt_name is not None:
        logger.warning(
            "The model's default prompt %r would be added to every text; it is switched off because this "
            "script adds the prefixes itself (default_prompt_name %r -> None).",
            model.default_prompt_name,
            model.default_prompt_name,
        )
        model.default_prompt_name = None
    model.prompts = {**model.prompts, "query": model_args.prefix_query, "passage": model_args.prefix_passage}
    # On every save the model card would embed training texts, which carry their prefixes already,
    # through encode_query, adding the "query" prompt a second time.
    # NOTE: the card's usage example still quotes prefixed training texts.
    model.model_card_data.generate_widget_examples = False
    logger.info("Model: %s, max_seq_length %d tokens.", model_args.model_name_or_path, model.max_seq_length)

    # 5. Baseline: the starting model on the validation pairs.
    results = {"before": None, "after": None}
    if evaluator is not None:
        results["before"] = evaluate(evaluator, model, "before training")

    # 6. Training.
    train_examples = [InputExample(texts=[query, positive]) for query, positive in zip(train_queries, train_positives)]
    loader, loss = build_train_objective(
        model,
        train_examples,
        batch_size=training_args.per_device_train_batch_size,
        loss_scale=training_args.loss_scale,
        mini_batch_size=training_args.mini_batch_size,
        seed=training_args.seed,
    )
    train(model, loader, loss, evaluator, training_args, use_amp)

    # 7. Final model, final evaluation and eval_results.json.
    model.save(str(output_dir))
    logger.info("Saved the final model to %s.", output_dir)
    if evaluator is not None:
        results["after"] = evaluate(evaluator, model, "after training")
        gain = results["after"]["ndcg@10"] - results["before"]["ndcg@10"]
        logger.info("nDCG@10 changed by %+.4f.", gain)
    results.update(
        {
            "train_rows": len(train_examples),
            "validation": evaluation_sizes,
            "best_model_dir": str(output_dir / "best") if training_args.save_best_model else None,
        }
    )
    write_json(output_dir / "eval_results.json", results)


if __name__ == "__main__":
    run_script(main)
