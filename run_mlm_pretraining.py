"""Adapt a BERT-like encoder to a corpus with masked-language modelling (MLM).

Example (one process; prefix with `accelerate launch` for several):

    python run_mlm_pretraining.py --model_name_or_path bert-base-uncased \
        --train_file data/mlm/train.csv --validation_file data/mlm/validation.csv \
        --output_dir outputs/mlm --max_seq_length 128 --num_train_epochs 1 \
        --per_device_train_batch_size 32 --do_train --do_eval

From scratch, fully offline, with a WordPiece tokenizer trained on the training split:

    python run_mlm_pretraining.py --model_type bert \
        --config_overrides "hidden_size=64,num_hidden_layers=2,num_attention_heads=2,intermediate_size=128" \
        --train_tokenizer_vocab_size 2000 --train_file data/mlm/train.csv --output_dir outputs/mlm-scratch \
        --do_train --do_eval

Writes to `--output_dir`:
- `checkpoint-<step>/` folders while training, and the final masked-LM model and tokenizer;
- `sentence-transformer-format/`, the model as Transformer + mean Pooling;
- `train_results.json`, `eval_results.json` and `all_results.json` with `train_loss`,
  `eval_loss`, `perplexity` and sample and token counts;
- `mlm_run_settings.json`, the settings that a resumed run must match.
"""

import itertools
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import accelerate
import datasets
import torch
import transformers
from transformers import (
    CONFIG_MAPPING,
    AutoConfig,
    AutoModelForMaskedLM,
    AutoTokenizer,
    HfArgumentParser,
    TrainingArguments,
    set_seed,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from e5_pipeline.csv_io import load_csv_dataset
from e5_pipeline.logging_utils import run_script, setup_logging, write_json
from e5_pipeline.mlm_training import (
    MaskedLMTrainer,
    head_parameter_names,
    OffsetPaddingCollator,
    is_complete_checkpoint,
    latest_complete_checkpoint,
    list_checkpoints,
    new_head_parameter_names,
    perplexity,
    resolve_head_learning_rate,
    train_wordpiece_tokenizer,
    transformers_load_report_hidden,
)
from e5_pipeline.models import build_mean_pooling_model, check_local_model_path

logger = logging.getLogger(__name__)

SENTENCE_TRANSFORMER_DIRNAME = "sentence-transformer-format"
RUN_SETTINGS_FILENAME = "mlm_run_settings.json"
# Folder of a tokenizer trained by the main process, which the other processes load.
TRAINED_TOKENIZER_DIRNAME = "trained-tokenizer"
# Default block length when --max_seq_length is unset, if the model allows that many tokens.
DEFAULT_MAX_SEQ_LENGTH = 512
# Percent of the training rows held out for validation when --validation_split_percentage is unset.
DEFAULT_VALIDATION_SPLIT_PERCENTAGE = 5.0
# Values of --model_type: the model types that transformers has a masked-LM class for.
MASKED_LM_MODEL_TYPES = sorted(MODEL_FOR_MASKED_LM_MAPPING_NAMES)


@dataclass
class ModelArguments:
    """Model, configuration and tokenizer to start from."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub name or local folder of the checkpoint to adapt. Leave unset with --model_type to train from scratch."},
    )
    model_type: str | None = field(
        default=None,
        metadata={
            "help": "Architecture of a model trained from scratch: a transformers model type with a masked-LM "
            "class, such as bert, roberta or distilbert. An invalid value is rejected with the list of valid ones."
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated key=value settings applied to the from-scratch configuration, for example "
            "'hidden_size=128,num_hidden_layers=2'. Only with --model_type."
        },
    )
    config_name: str | None = field(
        default=None, metadata={"help": "Configuration name or folder, when it differs from --model_name_or_path."}
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer name or folder, when it differs from --model_name_or_path."}
    )
    train_tokenizer_vocab_size: int | None = field(
        default=None,
        metadata={
            "help": "Vocabulary size (entries) of a WordPiece tokenizer trained on the training split and saved with "
            "the model. Only for --model_type runs without --tokenizer_name."
        },
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Folder for downloaded models and dataset caches."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the hub model (default 'main')."})
    token: str | None = field(default=None, metadata={"help": "Hugging Face token for private hub models."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run modelling code shipped with the checkpoint. Enable only for repositories you trust."}
    )
    head_warmup_steps: int | None = field(
        default=None,
        metadata={
            "help": "Optimizer steps at the start of training during which only the MLM head trains and the encoder "
            "stays frozen. Unset (default): 10%% of all steps when the checkpoint has no MLM head (an embedding "
            "model such as all-MiniLM), else 0. These steps count toward --max_steps or --num_train_epochs, and the "
            "learning-rate schedule spans the whole run, so the encoder starts at the rate the schedule has "
            "reached then; set --warmup_steps above this value to start it low."
        },
    )
    head_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Peak learning rate of the MLM head, in place of --learning_rate, under the same schedule. Unset "
            "(default): 1e-3 when the checkpoint has no MLM head, so that the new head learns within a short run "
            "while the encoder moves gently; else --learning_rate."
        },
    )


@dataclass
class DataArguments:
    """Training and validation texts, and how they become model inputs."""

    train_file: str | None = field(default=None, metadata={"help": "CSV of training texts, as prepare_mlm_data.py writes it."})
    validation_file: str | None = field(default=None, metadata={"help": "CSV of validation texts, same layout."})
    validation_split_percentage: float | None = field(
        default=None,
        metadata={
            "help": "Percent of the training rows held out for validation with --do_eval and no --validation_file. "
            "Unset: 5. Ignored, with a WARNING, when --validation_file is given (as in the transformers examples)."
        },
    )
    text_column_name: str = field(default="text", metadata={"help": "CSV column that holds the texts (default 'text')."})
    max_seq_length: int | None = field(
        default=None,
        metadata={
            "help": "Tokens per training example. Unset: the model's limit, at most 512. Larger values are "
            "lowered to the model and tokenizer limit with a WARNING."
        },
    )
    mlm_probability: float = field(default=0.15, metadata={"help": "Fraction of tokens masked for the MLM loss (default 0.15)."})
    line_by_line: bool = field(
        default=False,
        metadata={"help": "Use each row as one example, truncated to --max_seq_length, instead of packing rows into full blocks."},
    )
    pad_to_max_length: bool = field(
        default=False,
        metadata={"help": "In line-by-line mode, pad every batch to --max_seq_length instead of its longest row."},
    )
    whole_word_mask: bool = field(
        default=False, metadata={"help": "Mask all sub-word tokens of a chosen word together (needs a fast tokenizer)."}
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for tokenization (default: none, tokenize in this process)."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training examples (blocks or rows), for quick runs."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N validation examples (blocks or rows), for quick runs."}
    )


@dataclass
class RunArguments:
    """Treatment of an output folder that already contains checkpoints or a finished model."""

    overwrite_output: bool = field(
        default=False,
        metadata={
            "help": "Delete the checkpoints and final outputs already in --output_dir and start over. Without it, a "
            "run resumes from the latest complete checkpoint there, and rejects a folder of another run."
        },
    )


def parse_arguments(args: list[str] | None) -> tuple[ModelArguments, DataArguments, RunArguments, TrainingArguments]:
    """Parse the command line (or `args`) and reject contradictory flags before any heavy work."""
    parser = HfArgumentParser((ModelArguments, DataArguments, RunArguments, TrainingArguments))
    model_args, data_args, run_args, training_args = parser.parse_args_into_dataclasses(args=args)

    if model_args.model_name_or_path is None and model_args.model_type is None:
        raise ValueError("Pass --model_name_or_path to adapt a checkpoint, or --model_type to train from scratch.")
    if model_args.model_name_or_path is not None and model_args.model_type is not None:
        raise ValueError(
            f"--model_name_or_path {model_args.model_name_or_path!r} and --model_type {model_args.model_type!r} "
            "contradict each other: pass --model_type only to train from scratch."
        )
    if model_args.model_type is not None and model_args.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise ValueError(
            f"--model_type {model_args.model_type!r} is invalid: it must be a model type with a masked-LM class, "
            f"one of {', '.join(MASKED_LM_MODEL_TYPES)}."
        )
    for flag, name in (
        ("--model_name_or_path", "model_name_or_path"),
        ("--config_name", "config_name"),
        ("--tokenizer_name", "tokenizer_name"),
    ):
        value = getattr(model_args, name)
        if value is not None:
            setattr(model_args, name, check_local_model_path(value, flag))
    if model_args.config_overrides is not None and model_args.model_type is None:
        raise ValueError("--config_overrides applies only to a from-scratch model; pass --model_type with it.")
    if model_args.train_tokenizer_vocab_size is not None:
        if model_args.model_type is None or model_args.tokenizer_name is not None:
            raise ValueError("--train_tokenizer_vocab_size needs --model_type and no --tokenizer_name.")
        if model_args.train_tokenizer_vocab_size < 10:
            raise ValueError(f"--train_tokenizer_vocab_size must be at least 10, got {model_args.train_tokenizer_vocab_size}.")
    elif model_args.model_type is not None and model_args.tokenizer_name is None:
        raise ValueError(
            "A from-scratch model needs a tokenizer: pass --tokenizer_name, or --train_tokenizer_vocab_size N to "
            "train one on the training split."
        )
    if model_args.head_warmup_steps is not None and model_args.head_warmup_steps < 0:
        raise ValueError(f"--head_warmup_steps must be 0 or more, got {model_args.head_warmup_steps}.")
    if model_args.head_learning_rate is not None and model_args.head_learning_rate <= 0:
        raise ValueError(
            f"--head_learning_rate must be above 0, got {model_args.head_learning_rate}. Pass a positive rate such as "
            "1e-3, or leave it unset for the default."
        )

    if not training_args.do_train and not training_args.do_eval:
        raise ValueError("Nothing to do: pass --do_train, --do_eval or both.")
    if data_args.train_file is None:
        raise ValueError("Pass --train_file (a CSV with a text column; prepare_mlm_data.py writes one).")
    for flag, path in (("--train_file", data_args.train_file), ("--validation_file", data_args.validation_file)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {path!r} not found.")
    split_percentage = data_args.validation_split_percentage
    if split_percentage is not None and not 0 < split_percentage < 100:
        raise ValueError(
            f"--validation_split_percentage must be between 0 and 100, got {data_args.validation_split_percentage}."
        )
    if not 0 < data_args.mlm_probability < 1:
        raise ValueError(f"--mlm_probability must be between 0 and 1, got {data_args.mlm_probability}.")
    if data_args.max_seq_length is not None and data_args.max_seq_length < 8:
        raise ValueError(f"--max_seq_length must be at least 8 tokens, got {data_args.max_seq_length}.")
    if data_args.pad_to_max_length and not data_args.line_by_line:
        raise ValueError("--pad_to_max_length applies only with --line_by_line: packed blocks are always full.")
    if run_args.overwrite_output and training_args.resume_from_checkpoint is not None:
        raise ValueError("--overwrite_output and --resume_from_checkpoint contradict each other; pass one of them.")
    return model_args, data_args, run_args, training_args


def find_resume_checkpoint(
    training_args: TrainingArguments, run_args: RunArguments, run_settings: dict
) -> str | None:
    """Decide where training resumes from, clearing the output folder first when the user asks to start over.

    Raises:
        FileNotFoundError: --resume_from_checkpoint names a missing or incomplete folder.
        ValueError: --output_dir contains checkpoints or a finished model of another run.
    """
    output_dir = Path(training_args.output_dir)
    settings_path = output_dir / RUN_SETTINGS_FILENAME

    if run_args.overwrite_output:
        if training_args.process_index == 0 and output_dir.exists():
            logger.warning("--overwrite_output: deleting the earlier outputs in %s.", output_dir)
            for checkpoint in list_checkpoints(output_dir):
                shutil.rmtree(checkpoint)
            for name in (SENTENCE_TRANSFORMER_DIRNAME, TRAINED_TOKENIZER_DIRNAME):
                shutil.rmtree(output_dir / name, ignore_errors=True)
            for name in ("all_results.json", "train_results.json", "eval_results.json", RUN_SETTINGS_FILENAME):
                (output_dir / name).unlink(missing_ok=True)
        return None

    if training_args.resume_from_checkpoint is not None:
        checkpoint = Path(training_args.resume_from_checkpoint)
        if not checkpoint.is_dir():
            raise FileNotFoundError(f"--resume_from_checkpoint {str(checkpoint)!r} not found.")
        if not is_complete_checkpoint(checkpoint):
            raise FileNotFoundError(
                f"--resume_from_checkpoint {str(checkpoint)!r} is incomplete: it needs model weights and "
                "trainer_state.json (an interrupted save lacks them). Pick an earlier checkpoint-* folder."
            )
        check_same_run(settings_path, run_settings)
        return str(checkpoint)

    checkpoints = list_checkpoints(output_dir)
    finished = (output_dir / "all_results.json").is_file()
    if not checkpoints and not finished:
        return None
    check_same_run(settings_path, run_settings)
    latest = latest_complete_checkpoint(output_dir)
    if latest is None:
        raise ValueError(
            f"--output_dir {str(output_dir)!r} contains {len(checkpoints)} checkpoint folder(s) but none is complete. "
            "Pass --overwrite_output to delete them and start over, or choose another --output_dir."
        )
    return str(latest)


def check_same_run(settings_path: Path, run_settings: dict) -> None:
    """Reject resuming when the output folder was written by a run with other settings (or unknown ones)."""
    if not settings_path.is_file():
        raise ValueError(
            f"{settings_path.parent} contains checkpoints or results but no {settings_path.name}, so they may come from "
            "another run. Pass --overwrite_output to delete them and start over, or choose another --output_dir."
        )
    saved = json.loads(settings_path.read_text(encoding="utf-8"))
    differences = [
        f"{key}: {saved.get(key)!r} there, {value!r} now" for key, value in run_settings.items() if saved.get(key) != value
    ]
    if differences:
        raise ValueError(
            f"{settings_path.parent} contains checkpoints of another run ({'; '.join(differences)}). Pass "
            "--overwrite_output to delete them and start over, or choose another --output_dir."
        )


def describe_run(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> dict:
    """Return the settings that a resumed run must share with the run that wrote the checkpoints."""
    return {
        "model_name_or_path": model_args.model_name_or_path,
        "model_type": model_args.model_type,
        "config_overrides": model_args.config_overrides,
        "tokenizer_name": model_args.tokenizer_name,
        "train_tokenizer_vocab_size": model_args.train_tokenizer_vocab_size,
        "train_file": str(Path(data_args.train_file).resolve()),
        "max_seq_length": data_args.max_seq_length,
        "line_by_line": data_args.line_by_line,
        "global_train_batch_size": training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps
        * training_args.world_size,
    }


def load_texts(data_args: DataArguments, training_args: TrainingArguments, cache_dir: str | None) -> datasets.DatasetDict:
    """Load the text column of the CSVs, drop blank rows (counted), and hold out validation rows if needed."""
    data_files = {"train": data_args.train_file}
    if data_args.validation_file is not None:
        data_files["validation"] = data_args.validation_file
    raw = load_csv_dataset(data_files, [data_args.text_column_name], cache_dir=cache_dir)
    column = data_args.text_column_name
    raw = raw.select_columns([column])

    for split in raw:
        rows = raw[split].num_rows
        raw[split] = raw[split].filter(lambda batch: [bool(text.strip()) for text in batch[column]], batched=True)
        blank = rows - raw[split].num_rows
        if blank:
            logger.warning("Dropped %d blank rows of %d in %s.", blank, rows, data_files[split])
        if raw[split].num_rows == 0:
            raise ValueError(f"{data_files[split]} has no non-blank text in column {column!r}.")

    split_percentage = data_args.validation_split_percentage
    if split_percentage is not None and data_args.validation_file is not None:
        logger.warning(
            "--validation_split_percentage %s is ignored: --validation_file %s is the validation split.",
            split_percentage,
            data_args.validation_file,
        )
    if split_percentage is None:
        split_percentage = DEFAULT_VALIDATION_SPLIT_PERCENTAGE

    if "validation" not in raw and training_args.do_eval:
        fraction = split_percentage / 100
        if round(raw["train"].num_rows * fraction) < 1:
            raise ValueError(
                f"{data_args.train_file} has {raw['train'].num_rows} rows, too few to hold out "
                f"{split_percentage}% for validation. Pass --validation_file or raise "
                "--validation_split_percentage."
            )
        split = raw["train"].train_test_split(test_size=fraction, seed=training_args.seed)
        raw = datasets.DatasetDict({"train": split["train"], "validation": split["test"]})
        logger.info(
            "Held out %d of the training rows for validation (--validation_split_percentage %s).",
            raw["validation"].num_rows,
            split_percentage,
        )
    return raw


def load_tokenizer(
    model_args: ModelArguments,
    data_args: DataArguments,
    raw: datasets.DatasetDict,
    resume_from: str | None,
    shared_dir: Path,
    is_main_process: bool,
):
    """Load the tokenizer, or train a WordPiece one on the training split for a from-scratch model.

    The main process saves a trained tokenizer to `shared_dir`, where the other processes load it.
    """
    hub_kwargs = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token}
    if model_args.train_tokenizer_vocab_size is None:
        name = model_args.tokenizer_name or model_args.model_name_or_path
        return AutoTokenizer.from_pretrained(name, trust_remote_code=model_args.trust_remote_code, **hub_kwargs)
    if resume_from is not None:
        logger.info("Loading the tokenizer trained for this run from %s.", resume_from)
        return AutoTokenizer.from_pretrained(resume_from)
    if shared_dir.is_dir() and not is_main_process:
        # The main process trained it first (main_process_first), so every process uses the same vocabulary.
        return AutoTokenizer.from_pretrained(shared_dir)
    texts = raw["train"][data_args.text_column_name]
    logger.info(
        "Training a WordPiece tokenizer of %d entries on %d training rows.", model_args.train_tokenizer_vocab_size, len(texts)
    )
    model_max_length = data_args.max_seq_length or DEFAULT_MAX_SEQ_LENGTH
    tokenizer = train_wordpiece_tokenizer(iter(texts), model_args.train_tokenizer_vocab_size, model_max_length)
    if len(tokenizer) < model_args.train_tokenizer_vocab_size:
        logger.warning(
            "The trained tokenizer has %d entries, fewer than --train_tokenizer_vocab_size %d: the training split "
            "has no more distinct pieces.",
            len(tokenizer),
            model_args.train_tokenizer_vocab_size,
        )
    tokenizer.save_pretrained(shared_dir)
    return tokenizer


def load_model(model_args: ModelArguments, tokenizer) -> tuple[torch.nn.Module, bool]:
    """Load or build the masked-LM model, and tell whether a loaded checkpoint lacked the MLM head."""
    hub_kwargs = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token}
    if model_args.model_type is not None:
        if model_args.config_name is not None:
            config = AutoConfig.from_pretrained(model_args.config_name, **hub_kwargs)
        else:
            config = CONFIG_MAPPING[model_args.model_type]()
        if model_args.config_overrides is not None:
            logger.info("Overriding the configuration with %s.", model_args.config_overrides)
            config.update_from_string(model_args.config_overrides)
        config.vocab_size = len(tokenizer)
        model = AutoModelForMaskedLM.from_config(config, trust_remote_code=model_args.trust_remote_code)
        logger.info(
            "Built a %s from scratch with %.1fM parameters.", type(model).__name__, model.num_parameters() / 1e6
        )
        return model, False

    config = AutoConfig.from_pretrained(
        model_args.config_name or model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code, **hub_kwargs
    )
    model, loading_info = AutoModelForMaskedLM.from_pretrained(
        model_args.model_name_or_path,
        config=config,
        output_loading_info=True,
        trust_remote_code=model_args.trust_remote_code,
        **hub_kwargs,
    )
    new_head_names = new_head_parameter_names(model, loading_info["missing_keys"])
    if new_head_names:
        logger.warning(
            "%s has no MLM head: %s are newly initialised. Its first gradients can scramble the pretrained encoder, "
            "so --head_warmup_steps trains the head alone first.",
            model_args.model_name_or_path,
            ", ".join(new_head_names),
        )
    return model, bool(new_head_names)


def clamp_max_seq_length(requested: int | None, tokenizer, model) -> int:
    """Return --max_seq_length, lowered with a WARNING to what both the tokenizer and model accept."""
    limits = [tokenizer.model_max_length]
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions is not None:
        # RoBERTa-style models reserve two of their 514 positions; their tokenizer's limit of 512 accounts for that.
        limits.append(max_positions)
    limit = min(limits)
    if requested is None:
        chosen = min(limit, DEFAULT_MAX_SEQ_LENGTH)
        logger.info("--max_seq_length unset: using %d tokens.", chosen)
        return chosen
    if requested > limit:
        logger.warning(
            "--max_seq_length %d exceeds what the model and tokenizer accept; using %d tokens instead.", requested, limit
        )
        return limit
    return requested


def tokenize_texts(
    raw: datasets.DatasetDict, tokenizer, data_args: DataArguments, max_seq_length: int, training_args: TrainingArguments
) -> tuple[datasets.DatasetDict, dict]:
    """Tokenize every split once, then pack it into blocks of `max_seq_length` (or keep rows in line-by-line mode).

    Returns the tokenized splits and counts per split (rows, tokens, examples, dropped or truncated).

    Raises:
        ValueError: a split is too small for one block of `max_seq_length` tokens.
    """
    column = data_args.text_column_name
    return_offsets = data_args.whole_word_mask

    def tokenize(batch):
        encoded = tokenizer(
            batch[column], return_special_tokens_mask=True, return_offsets_mapping=return_offsets, verbose=False
        )
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        return encoded

    def truncate(batch):
        # Keep a final special token ([SEP], </s>) after cutting, so a truncated row still ends like a whole one.
        truncated = {key: [] for key in batch if key != "length"}
        for index, length in enumerate(batch["length"]):
            keep_last = batch["special_tokens_mask"][index][-1] == 1
            for key in truncated:
                values = batch[key][index]
                if length > max_seq_length:
                    values = values[: max_seq_length - 1] + values[-1:] if keep_last else values[:max_seq_length]
                truncated[key].append(values)
        return truncated

    def group_texts(batch):
        concatenated = {key: list(itertools.chain.from_iterable(batch[key])) for key in batch if key != "length"}
        total_length = len(concatenated["input_ids"]) // max_seq_length * max_seq_length
        return {
            key: [values[start : start + max_seq_length] for start in range(0, total_length, max_seq_length)]
            for key, values in concatenated.items()
        }

    map_kwargs = {"batched": True, "num_proc": data_args.preprocessing_num_workers}
    tokenized = datasets.DatasetDict()
    counts = {}
    for split, dataset in raw.items():
        source = data_args.train_file if split == "train" else (data_args.validation_file or data_args.train_file)
        with training_args.main_process_first(desc=f"tokenizing the {split} split"):
            encoded = dataset.map(tokenize, remove_columns=[column], desc=f"Tokenizing {split} texts", **map_kwargs)
        tokens = sum(encoded["length"])
        split_counts = {"rows": dataset.num_rows, "tokens": tokens}
        if data_args.line_by_line:
            split_counts["truncated_rows"] = sum(length > max_seq_length for length in encoded["length"])
            with training_args.main_process_first(desc=f"truncating the {split} split"):
                examples = encoded.map(
                    truncate, remove_columns=["length"], desc=f"Truncating {split} rows to {max_seq_length} tokens", **map_kwargs
                )
            if split_counts["truncated_rows"]:
                logger.warning(
                    "%d of %d %s rows are longer than --max_seq_length %d tokens and were truncated.",
                    split_counts["truncated_rows"],
                    dataset.num_rows,
                    split,
                    max_seq_length,
                )
        else:
            with training_args.main_process_first(desc=f"grouping the {split} split"):
                examples = encoded.map(
                    group_texts,
                    remove_columns=list(encoded.column_names),
                    desc=f"Packing {split} texts into blocks of {max_seq_length} tokens",
                    **map_kwargs,
                )
            if examples.num_rows == 0:
                raise ValueError(
                    f"{source} gives only {tokens} tokens for the {split} split, fewer than one block of "
                    f"--max_seq_length {max_seq_length}. Add text, lower --max_seq_length, or pass --line_by_line."
                )
            # Each map batch of 1,000 rows drops the tokens that do not fill a last block.
            split_counts["dropped_tokens"] = tokens - examples.num_rows * max_seq_length
            if split_counts["dropped_tokens"]:
                logger.info(
                    "%s: %d tokens packed into %d blocks; the %d tokens (%.1f%%) that did not fill a last block were dropped.",
                    split,
                    tokens,
                    examples.num_rows,
                    split_counts["dropped_tokens"],
                    100 * split_counts["dropped_tokens"] / tokens,
                )
        split_counts["examples"] = examples.num_rows
        tokenized[split] = examples
        counts[split] = split_counts
    return tokenized, counts


def main(args: list[str] | None = None) -> dict:
    """Run the MLM stage and return the metrics written to `all_results.json`."""
    # 1. Arguments, logging and the start-up summary.
    model_args, data_args, run_args, training_args = parse_arguments(args)
    setup_logging(training_args.get_process_log_level(), main_process=training_args.should_log)
    datasets.utils.logging.set_verbosity(training_args.get_process_log_level())
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    logger.warning(
        "Process %d of %d, device %s, bf16 %s, fp16 %s.",
        training_args.process_index,
        training_args.world_size,
        training_args.device,
        training_args.bf16,
        training_args.fp16,
    )
    launched_processes = int(os.environ.get("WORLD_SIZE", "1"))
    if launched_processes != training_args.world_size:
        raise ValueError(
            f"The launcher started {launched_processes} processes but training would run with a world size of "
            f"{training_args.world_size}, so every process would train and write alone. Without a GPU, pass "
            "--use_cpu so that the processes train together on CPUs over gloo."
        )
    logger.info(
        "Versions: torch %s, transformers %s, datasets %s, accelerate %s.",
        torch.__version__,
        transformers.__version__,
        datasets.__version__,
        accelerate.__version__,
    )
    logger.info("Model arguments %s", model_args)
    logger.info("Data arguments %s", data_args)
    logger.info("Run arguments %s", run_args)
    logger.info("Training arguments %s", training_args)

    # 2. Resume from a checkpoint, start over, or start fresh.
    run_settings = describe_run(model_args, data_args, training_args)
    resume_from = find_resume_checkpoint(training_args, run_args, run_settings) if training_args.do_train else None
    if resume_from is not None:
        logger.info("Resuming training from %s.", resume_from)
    set_seed(training_args.seed)

    # 3. Texts, tokenizer and model.
    raw = load_texts(data_args, training_args, model_args.cache_dir)
    with training_args.main_process_first(desc="training the tokenizer"):
        tokenizer = load_tokenizer(
            model_args,
            data_args,
            raw,
            resume_from,
            shared_dir=Path(training_args.output_dir) / TRAINED_TOKENIZER_DIRNAME,
            is_main_process=training_args.process_index == 0,
        )
    if data_args.whole_word_mask and not tokenizer.is_fast:
        raise ValueError("--whole_word_mask needs a fast tokenizer (it reads token offsets); this one is not.")
    model, head_is_new = load_model(model_args, tokenizer)
    embedding_rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > embedding_rows:
        logger.warning(
            "The tokenizer has %d entries but the embedding matrix %d rows; resizing the embeddings to %d.",
            len(tokenizer),
            embedding_rows,
            len(tokenizer),
        )
        model.resize_token_embeddings(len(tokenizer))
    max_seq_length = clamp_max_seq_length(data_args.max_seq_length, tokenizer, model)

    # 4. Tokenize once and pack into blocks (or keep rows).
    tokenized, counts = tokenize_texts(raw, tokenizer, data_args, max_seq_length, training_args)
    for split, limit in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples)):
        if split in tokenized and limit is not None and limit < tokenized[split].num_rows:
            logger.info("Keeping the first %d of %d %s examples (--max_*_samples).", limit, tokenized[split].num_rows, split)
            tokenized[split] = tokenized[split].select(range(limit))
            counts[split]["examples"] = limit
    logger.info("Example counts per split: %s", counts)

    # 5. Masking collator and trainer.
    collator_class = OffsetPaddingCollator if data_args.whole_word_mask and data_args.line_by_line else None
    collator_class = collator_class or transformers.DataCollatorForLanguageModeling
    data_collator = collator_class(
        tokenizer=tokenizer,
        mlm_probability=data_args.mlm_probability,
        whole_word_mask=data_args.whole_word_mask,
        pad_to_multiple_of=max_seq_length if data_args.pad_to_max_length else None,
    )
    # Every dataset column is read by the model or by the collator, which masks with special_tokens_mask
    # and offset_mapping, so Trainer must not drop the columns that the forward signature lacks.
    training_args.remove_unused_columns = False
    trainer = MaskedLMTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"] if training_args.do_train else None,
        eval_dataset=tokenized["validation"] if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=data_collator,
        head_parameter_names=head_parameter_names(model),
        head_is_new=head_is_new,
        head_warmup_steps=model_args.head_warmup_steps,
        head_learning_rate=resolve_head_learning_rate(model_args.head_learning_rate, head_is_new),
    )
    global_batch = (
        training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * training_args.world_size
    )
    logger.info(
        "Global batch: %d examples = %d per device x %d accumulation steps x %d processes; %d tokens per optimizer step.",
        global_batch,
        training_args.per_device_train_batch_size,
        training_args.gradient_accumulation_steps,
        training_args.world_size,
        global_batch * max_seq_length,
    )

    # 6. Train; a non-finite loss raises before anything final is saved.
    all_results = {}
    if training_args.do_train:
        # Written only now that every input is checked, so a failed start leaves no settings behind.
        if training_args.process_index == 0:
            write_json(Path(training_args.output_dir) / RUN_SETTINGS_FILENAME, run_settings)
        train_result = trainer.train(resume_from_checkpoint=resume_from)
        trainer.save_model()
        metrics = dict(train_result.metrics)
        metrics["train_samples"] = tokenized["train"].num_rows
        metrics["train_tokens"] = counts["train"]["tokens"]
        metrics["max_seq_length"] = max_seq_length
        metrics["head_warmup_steps"] = trainer.head_warmup_steps or 0
        if trainer.head_learning_rate is not None:
            metrics["head_learning_rate"] = trainer.head_learning_rate
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        all_results.update(metrics)

    # 7. Evaluate: eval_loss and perplexity.
    if training_args.do_eval:
        metrics = trainer.evaluate()
        metrics["eval_samples"] = tokenized["validation"].num_rows
        metrics["perplexity"] = perplexity(metrics["eval_loss"])
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        all_results.update(metrics)

    # 8. On the main process only: the sentence-transformers folder.
    if training_args.do_train and trainer.is_world_process_zero():
        logger.info(
            "Building the sentence-transformers model from the encoder alone: the MLM head weights are left "
            "out and mean pooling needs no pooler layer, so transformers' load report of them is hidden."
        )
        with transformers_load_report_hidden():
            sentence_model = build_mean_pooling_model(training_args.output_dir, max_seq_length, device="cpu")
        sentence_dir = Path(training_args.output_dir) / SENTENCE_TRANSFORMER_DIRNAME
        sentence_model.save(str(sentence_dir))
        logger.info("Saved the sentence-transformers model (Transformer + mean Pooling) to %s.", sentence_dir)
    trainer.accelerator.wait_for_everyone()
    return all_results


if __name__ == "__main__":
    run_script(main)
