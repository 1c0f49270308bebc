#!/usr/bin/env bash
# run_pipeline.sh on the example data, offline, with a tiny BERT trained from scratch and its own
# WordPiece tokenizer. Any setting can still be overridden from the environment.
set -euo pipefail
EXAMPLES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export MLM_INPUT_FILES="${MLM_INPUT_FILES-$EXAMPLES_DIR/corpus.txt}"
export PAIRS_FILE="${PAIRS_FILE-$EXAMPLES_DIR/pairs.tsv}"
export EVAL_CORPUS_FILE="${EVAL_CORPUS_FILE-$EXAMPLES_DIR/corpus.txt}"
export OUTPUT_DIR="${OUTPUT_DIR-outputs/quickstart}"
export MODEL_TYPE="${MODEL_TYPE-bert}"
export CONFIG_OVERRIDES="${CONFIG_OVERRIDES-hidden_size=64,num_hidden_layers=2,num_attention_heads=2,intermediate_size=128,max_position_embeddings=128}"
export TOKENIZER_VOCAB_SIZE="${TOKENIZER_VOCAB_SIZE-2000}"
export MLM_VALIDATION_SPLIT="${MLM_VALIDATION_SPLIT-0.05}"
export MLM_EPOCHS="${MLM_EPOCHS-10}"
export MLM_BATCH_SIZE="${MLM_BATCH_SIZE-16}"
export MLM_LEARNING_RATE="${MLM_LEARNING_RATE-5e-4}"
export MLM_MAX_SEQ_LENGTH="${MLM_MAX_SEQ_LENGTH-64}"
export MLM_SAVE_STEPS="${MLM_SAVE_STEPS-20}"
export CONTRASTIVE_VALIDATION_SPLIT="${CONTRASTIVE_VALIDATION_SPLIT-0.15}"
export CONTRASTIVE_EPOCHS="${CONTRASTIVE_EPOCHS-5}"
export CONTRASTIVE_BATCH_SIZE="${CONTRASTIVE_BATCH_SIZE-16}"
export CONTRASTIVE_LEARNING_RATE="${CONTRASTIVE_LEARNING_RATE-1e-4}"
export CONTRASTIVE_MAX_SEQ_LENGTH="${CONTRASTIVE_MAX_SEQ_LENGTH-64}"
export CONTRASTIVE_SAVE_STEPS="${CONTRASTIVE_SAVE_STEPS-20}"

exec "$EXAMPLES_DIR/../run_pipeline.sh" "$@"
