"""Building and loading sentence-transformers models with mean pooling."""

import logging
import os
from pathlib import Path

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

logger = logging.getLogger(__name__)


# Prefixes that mark a model argument as a local path rather than a hub name ('org/name').
LOCAL_PATH_PREFIXES = ("/", ".", "~")


def check_local_model_path(model_name_or_path: str, flag: str | None = None) -> str:
    """Return `model_name_or_path` with `~` expanded, after checking that a local path exists.

    A value that starts with '/', '.' or '~' is a local path; any other value is passed on as a hub
    name. Without this check, transformers reads a missing local path as an invalid hub repository
    id. `flag` names the command-line option in the error message.
    NOTE: a relative path without a leading './' (such as 'outputs/mlm') looks like a hub name, so it
    is not checked here.

    Raises:
        FileNotFoundError: a local path that does not exist.
    """
    if not model_name_or_path.startswith(LOCAL_PATH_PREFIXES):
        return model_name_or_path
    path = os.path.expanduser(model_name_or_path)
    if not os.path.exists(path):
        prefix = f"{flag}: " if flag else ""
        raise FileNotFoundError(
            f"{prefix}model folder {model_name_or_path!r} not found. Pass an existing local folder, or a hub model "
            "name such as 'bert-base-uncased' on a machine with network access."
        )
    return path


def build_mean_pooling_model(
    model_name_or_path: str, max_seq_length: int, device: str | None = None, **transformer_kwargs
) -> SentenceTransformer:
    """Wrap a transformers encoder as a SentenceTransformer: Transformer, then mean Pooling.

    `max_seq_length` (tokens) is set explicitly, so the saved model does not depend on whatever
    limit the tokenizer happens to carry.
    """
    transformer = Transformer(model_name_or_path, max_seq_length=max_seq_length, **transformer_kwargs)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    return SentenceTransformer(modules=[transformer, pooling], device=device)


def is_sentence_transformer_folder(path: str | os.PathLike) -> bool:
    """Tell whether `path` is a local folder saved by sentence-transformers (it has `modules.json`)."""
    return (Path(path) / "modules.json").is_file()


def load_sentence_transformer(
    model_name_or_path: str, max_seq_length: int | None = None, device: str | None = None
) -> SentenceTransformer:
    """Load a sentence-transformers model, or wrap a plain transformers model with mean pooling.

    A plain transformers folder gets a WARNING, because its mean-pooled embeddings were never
    trained for similarity.

    Raises:
        FileNotFoundError: `model_name_or_path` is a local path (see `check_local_model_path`) that
            does not exist.
    """
    model_name_or_path = check_local_model_path(model_name_or_path)
    if is_sentence_transformer_folder(model_name_or_path):
        model = SentenceTransformer(model_name_or_path, device=device)
        if max_seq_length is not None:
            model.max_seq_length = max_seq_length
        return model
    logger.warning(
        "%s is not a sentence-transformers folder (no modules.json); wrapping it as Transformer + mean Pooling.",
        model_name_or_path,
    )
    return build_mean_pooling_model(model_name_or_path, max_seq_length or 512, device=device)
