"""Masked-language-model loss that runs the prediction head only at the masked positions.

The stock `BertForMaskedLM.forward` projects every token onto the whole vocabulary, although the
loss reads only the ~15% of positions that carry a label. Gathering those positions first skips
most of the head's work (the transform, the vocabulary projection, its bias and the softmax). The
model itself is not changed, so checkpoints stay standard `AutoModelForMaskedLM` folders.
"""

import torch
import torch.nn.functional as F
from torch import nn

# Encoder and head attribute names of the masked-LM classes whose head maps hidden states to
# vocabulary logits position by position, so that it can run on a subset of positions.
ENCODER_AND_HEAD_ATTRIBUTES = {
    "BertForMaskedLM": ("bert", "cls"),
    "RobertaForMaskedLM": ("roberta", "lm_head"),
    "XLMRobertaForMaskedLM": ("roberta", "lm_head"),
}

# Label value that `DataCollatorForLanguageModeling` and `CrossEntropyLoss` use for "no target here".
IGNORE_INDEX = -100


def supports_masked_only_head(model: nn.Module) -> bool:
    """Return whether `masked_only_mlm_loss` supports `model`, that is, has the names of its encoder and head."""
    return type(model).__name__ in ENCODER_AND_HEAD_ATTRIBUTES


def masked_only_mlm_loss(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Compute the same mean cross-entropy as `model(**inputs).loss`, with logits only where labels are set.

    A batch without any label other than -100 (short rows can draw no mask) gives a loss of exactly
    0, where the stock loss gives NaN (a mean over zero positions). The zero is computed from the
    head's output, so it stays in the autograd graph: backward gives every parameter a zero
    gradient, and DistributedDataParallel sees the same parameters used as in any other batch.
    """
    encoder_name, head_name = ENCODER_AND_HEAD_ATTRIBUTES[type(model).__name__]
    encoder_inputs = {key: value for key, value in inputs.items() if key != "labels"}
    labels = inputs["labels"].reshape(-1)  # (batch * seq,)
    hidden_states = getattr(model, encoder_name)(**encoder_inputs, return_dict=True).last_hidden_state  # (batch, seq, hidden)
    hidden_states = hidden_states.reshape(-1, hidden_states.shape[-1])  # (batch * seq, hidden)

    # Flat positions and index_select, rather than a boolean-mask gather on the 3-D tensor: the
    # backward pass then scatters rows into one flat gradient with index_add.
    masked_positions = (labels != IGNORE_INDEX).nonzero().squeeze(1)  # (masked,)
    masked_hidden_states = hidden_states.index_select(0, masked_positions)  # (masked, hidden)
    logits = getattr(model, head_name)(masked_hidden_states)  # (masked, vocab)
    if masked_positions.numel() == 0:
        return logits.float().sum()  # () sum over an empty tensor: exactly 0
    return F.cross_entropy(logits.float(), labels.index_select(0, masked_positions))
