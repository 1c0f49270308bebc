"""Tests of the masked-only MLM head: same loss and gradients as the stock head, standard checkpoints."""

import pytest
import torch
from transformers import AutoModelForMaskedLM, BertConfig, BertModel, RobertaConfig, RobertaForMaskedLM

from e5_pipeline.masked_lm_head import masked_only_mlm_loss, supports_masked_only_head

BATCH_SIZE, SEQ_LENGTH = 4, 24
PAD_TOKEN_ID = 0


def build_batch(vocab_size: int, seed: int = 0, mask_probability: float = 0.15) -> dict[str, torch.Tensor]:
    """Build a padded batch: rows of different lengths, labels on a random 15% of the real tokens."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab_size, (BATCH_SIZE, SEQ_LENGTH), generator=generator)  # (batch, seq)
    lengths = torch.tensor([SEQ_LENGTH, SEQ_LENGTH - 5, 9, 3])  # (batch,)
    attention_mask = (torch.arange(SEQ_LENGTH)[None, :] < lengths[:, None]).long()  # (batch, seq)
    input_ids = input_ids.masked_fill(attention_mask == 0, PAD_TOKEN_ID)
    is_masked = (torch.rand(BATCH_SIZE, SEQ_LENGTH, generator=generator) < mask_probability) & (attention_mask == 1)
    is_masked[:, 0] = True  # at least one label per row, padded rows included
    labels = input_ids.masked_fill(~is_masked, -100)  # (batch, seq)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def build_tiny_roberta(seed: int = 0) -> RobertaForMaskedLM:
    torch.manual_seed(seed)
    config = RobertaConfig(
        vocab_size=300,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=1,
    )
    return RobertaForMaskedLM(config)


@pytest.fixture
def tiny_bert(tiny_bert_dir):
    """The tiny BertForMaskedLM, freshly loaded for each test because tests change its gradients."""
    return AutoModelForMaskedLM.from_pretrained(tiny_bert_dir)


@pytest.fixture(params=["bert", "roberta"])
def tiny_mlm_model(request, tiny_bert_dir):
    if request.param == "bert":
        return AutoModelForMaskedLM.from_pretrained(tiny_bert_dir)
    return build_tiny_roberta()


def relative_difference(ours: torch.Tensor, stock: torch.Tensor) -> float:
    return ((ours - stock).abs().max() / stock.abs().max().clamp_min(1e-12)).item()


def test_supports_known_heads(tiny_bert):
    assert supports_masked_only_head(tiny_bert)
    assert supports_masked_only_head(build_tiny_roberta())
    assert not supports_masked_only_head(BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2)))


def test_loss_matches_stock(tiny_mlm_model):
    tiny_mlm_model.eval()
    batch = build_batch(tiny_mlm_model.config.vocab_size)
    with torch.no_grad():
        stock_loss = tiny_mlm_model(**batch).loss
        our_loss = masked_only_mlm_loss(tiny_mlm_model, batch)
    assert our_loss.shape == ()
    assert relative_difference(our_loss, stock_loss) < 1e-5


def test_loss_matches_stock_in_train_mode(tiny_bert):
    # Dropout is on: the same seed gives both paths the same dropout masks in the encoder, and the
    # head has no dropout.
    tiny_bert.train()
    batch = build_batch(tiny_bert.config.vocab_size, seed=1)
    torch.manual_seed(7)
    stock_loss = tiny_bert(**batch).loss
    torch.manual_seed(7)
    our_loss = masked_only_mlm_loss(tiny_bert, batch)
    assert relative_difference(our_loss, stock_loss) < 1e-5


def test_gradients_match_stock(tiny_mlm_model):
    tiny_mlm_model.eval()
    batch = build_batch(tiny_mlm_model.config.vocab_size, seed=2)

    tiny_mlm_model(**batch).loss.backward()
    stock_gradients = {name: parameter.grad.clone() for name, parameter in tiny_mlm_model.named_parameters()}
    tiny_mlm_model.zero_grad(set_to_none=True)
    masked_only_mlm_loss(tiny_mlm_model, batch).backward()
    our_gradients = {name: parameter.grad for name, parameter in tiny_mlm_model.named_parameters()}

    assert our_gradients.keys() == stock_gradients.keys()
    for name, stock_gradient in stock_gradients.items():
        assert our_gradients[name] is not None, name
        assert torch.allclose(our_gradients[name], stock_gradient, rtol=1e-5, atol=1e-7), name


def test_labels_at_padding_are_ignored(tiny_bert):
    # `build_batch` puts labels only on real tokens. A label on a pad position must count in both
    # losses, because neither path reads the attention mask when it computes the loss.
    tiny_bert.eval()
    batch = build_batch(tiny_bert.config.vocab_size, seed=3)
    batch["labels"][3, SEQ_LENGTH - 1] = 42
    with torch.no_grad():
        stock_loss = tiny_bert(**batch).loss
        our_loss = masked_only_mlm_loss(tiny_bert, batch)
    assert relative_difference(our_loss, stock_loss) < 1e-5


def test_no_masked_token_gives_zero(tiny_mlm_model):
    tiny_mlm_model.eval()
    batch = build_batch(tiny_mlm_model.config.vocab_size)
    batch["labels"] = torch.full_like(batch["labels"], -100)
    with torch.no_grad():
        stock_loss = tiny_mlm_model(**batch).loss
    our_loss = masked_only_mlm_loss(tiny_mlm_model, batch)
    assert torch.isnan(stock_loss)
    assert our_loss.item() == 0.0
    assert our_loss.requires_grad


def test_no_masked_token_zero_gradients(tiny_mlm_model):
    batch = build_batch(tiny_mlm_model.config.vocab_size)
    batch["labels"] = torch.full_like(batch["labels"], -100)
    masked_only_mlm_loss(tiny_mlm_model, batch).backward()
    for name, parameter in tiny_mlm_model.named_parameters():
        assert parameter.grad is not None, name
        assert not parameter.grad.any(), name


def test_checkpoint_stays_standard(tiny_bert, tmp_path):
    batch = build_batch(tiny_bert.config.vocab_size, seed=4)
    optimizer = torch.optim.SGD(tiny_bert.parameters(), lr=0.1)
    masked_only_mlm_loss(tiny_bert, batch).backward()
    optimizer.step()
    tiny_bert.save_pretrained(tmp_path)

    reloaded, loading_info = AutoModelForMaskedLM.from_pretrained(tmp_path, output_loading_info=True)
    assert type(reloaded).__name__ == "BertForMaskedLM"
    assert not loading_info["missing_keys"]
    assert not loading_info["unexpected_keys"]
    reloaded_state = reloaded.state_dict()
    for name, tensor in tiny_bert.state_dict().items():
        assert torch.equal(reloaded_state[name], tensor), name
    # The trained decoder still shares its weight with the input embeddings.
    assert reloaded.cls.predictions.decoder.weight.data_ptr() == reloaded.bert.embeddings.word_embeddings.weight.data_ptr()
