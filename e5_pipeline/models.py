"""Building and loading sentence-transformers models with mean pooling."""

import logging
import os
from pathlib import Path

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

logger = logging.getLogger(__name__)


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
    """
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
