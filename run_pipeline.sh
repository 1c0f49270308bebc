#!/usr/bin/env bash
# Train an E5-style embedding model: MLM domain adaptation, then contrastive tuning, then a report.
#
# Stages, each skipped on a rerun once it has finished:
#   1. prepare_mlm          prepare_mlm_data.py           -> OUTPUT_DIR/data/mlm/{train,validation}.csv
#   2. mlm                  run_mlm_pretraining.py         -> OUTPUT_DIR/mlm/ (+ sentence-transformer-format/)
#                           (through `accelerate launch`)
#   3. prepare_contrastive  prepare_contrastive_data.py    -> OUTPUT_DIR/data/contrastive/{train,validation}.csv
#   4. contrastive          run_contrastive_finetuning.py  -> OUTPUT_DIR/contrastive/ (from the MLM model)
#   5. contrastive_no_mlm   the same from BASE_MODEL       -> OUTPUT_DIR/contrastive-no-mlm/ (SKIP_MLM / ABLATE_MLM)
#   6. report               evaluate_retrieval.py          -> OUTPUT_DIR/report/{report.json,report.md}
#
# Every setting below can be overridden from the environment, e.g.
#   BEIR_DIR=../data/scifact BASE_MODEL=bert-base-uncased ./run_pipeline.sh
# `./run_pipeline.sh --help` lists them all with their defaults.
#
# A stage's done-marker (OUTPUT_DIR/.done/STAGE) is written only after it succeeds. A stage runs
# again when its marker is missing or older than the marker of a stage it reads from, and a
# prepare stage also runs again when one of its input files is newer than its marker. An
# interrupted training stage resumes from its last checkpoint; FORCE=1 starts every stage afresh.
#
# The first run records the settings that shape the results in OUTPUT_DIR/.done/settings. A
# rerun with other values stops and lists them, because its finished stages would not match
# them; FORCE=1 or a new OUTPUT_DIR starts over. A stage that starts afresh deletes its output
# folder, so the script rejects an OUTPUT_DIR that is not empty and has no .done folder.

set -euo pipefail

SCRIPT_NAME="$(basename "${BASH_SOURCE[0]}")"
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

SETTING_NAMES=()
SETTING_DEFAULTS=()
SETTING_HELP=()

# Declare a setting: keep the environment's value when the variable is set (even to ""), else use the default.
setting() {
  local name="$1" default="$2" help="$3"
  SETTING_NAMES+=("$name")
  SETTING_DEFAULTS+=("$default")
  SETTING_HELP+=("$help")
  if [[ -z "${!name+set}" ]]; then
    printf -v "$name" '%s' "$default"
  fi
}

# Data: either BEIR_DIR, or your own files (MLM_INPUT_FILES and PAIRS_FILE).
setting BEIR_DIR "" "BEIR folder: MLM corpus from corpus.jsonl, pairs from qrels/train.tsv, report on qrels/test.tsv over the whole corpus"
setting MLM_INPUT_FILES "" "Own files mode: space-separated text, .gz or .jsonl files, folders or globs for the MLM stage"
setting JSONL_TEXT_FIELDS "title,text" "JSON Lines fields joined into one MLM text"
setting PAIRS_FILE "" "Own files mode: tab-separated query/positive-passage pairs for the contrastive stage"
setting PAIRS_HEADER "1" "1 if PAIRS_FILE starts with a header row, 0 if not"
setting EVAL_CORPUS_FILE "" "Own files mode: passages (.jsonl, .csv or .txt) searched as distractors in evaluation and the report"
setting OUTPUT_DIR "outputs/pipeline" "Folder for every stage's output"

# Model.
setting BASE_MODEL "bert-base-uncased" "Starting checkpoint: hub name or local folder (ignored when MODEL_TYPE is set)"
setting MODEL_TYPE "" "Train a new model of this type (e.g. bert) from scratch instead of BASE_MODEL"
setting CONFIG_OVERRIDES "" "From scratch: config changes, e.g. hidden_size=64,num_hidden_layers=2"
setting TOKENIZER_VOCAB_SIZE "" "From scratch: train a WordPiece tokenizer of this many tokens on the MLM data"
setting PREFIX_QUERY "query: " "Prefix of every query (contrastive stage and report)"
setting PREFIX_PASSAGE "passage: " "Prefix of every passage (contrastive stage and report)"
setting SEED "42" "Seed of the data splits and of training"

# MLM stage.
setting MLM_VALIDATION_SPLIT "0.01" "Fraction of MLM texts held out for validation"
setting MLM_EPOCHS "1" "MLM epochs"
setting MLM_BATCH_SIZE "32" "MLM batch size per device"
setting MLM_LEARNING_RATE "2e-5" "MLM peak learning rate of the encoder"
setting MLM_WARMUP_STEPS "0" "MLM learning-rate warm-up, in optimizer steps"
setting MLM_MAX_SEQ_LENGTH "256" "MLM block length, in tokens"
setting MLM_HEAD_WARMUP_STEPS "" "Steps that train a new MLM head alone first (empty: the script's default)"
setting MLM_HEAD_LEARNING_RATE "" "Peak learning rate of the MLM head (empty: the script's default, 1e-3 for a new head)"
setting MLM_SAVE_STEPS "500" "Save a resumable MLM checkpoint every N optimizer steps"
setting MLM_EXTRA_ARGS "" "More run_mlm_pretraining.py flags, space-separated"
setting ACCELERATE_ARGS "" "Flags for accelerate launch, e.g. '--num_processes 4' (default: your accelerate config)"

# Contrastive stage.
setting CONTRASTIVE_VALIDATION_SPLIT "0.1" "Fraction of query/passage pairs held out for validation"
setting CONTRASTIVE_EPOCHS "3" "Contrastive epochs"
setting CONTRASTIVE_BATCH_SIZE "32" "Contrastive batch size (in-batch negatives: batch size - 1)"
setting CONTRASTIVE_LEARNING_RATE "2e-4" "Contrastive peak learning rate"
setting CONTRASTIVE_WARMUP_RATIO "0.1" "Fraction of contrastive steps spent warming up the learning rate"
setting LOSS_SCALE "20" "Inverse temperature of the contrastive loss (20 = temperature 0.05)"
setting CONTRASTIVE_MAX_SEQ_LENGTH "256" "Contrastive maximum tokens per text"
setting CONTRASTIVE_SAVE_STEPS "500" "Save a resumable contrastive checkpoint every N steps"
setting CONTRASTIVE_EXTRA_ARGS "" "More run_contrastive_finetuning.py flags, space-separated"

# Report and control.
setting EVAL_BATCH_SIZE "64" "Texts per encoding batch in the report"
setting PYTHON "python" "Python interpreter"
setting FORCE "0" "1: rerun every stage from the start, ignoring markers and checkpoints"
setting SKIP_MLM "0" "1: skip the MLM stage; contrastive tuning starts from BASE_MODEL"
setting ABLATE_MLM "0" "1: run contrastive tuning both from the MLM model and from BASE_MODEL, and report both"

usage() {
  cat <<EOF
Usage: [VARIABLE=value ...] ./$SCRIPT_NAME

Runs data preparation, MLM adaptation, contrastive tuning and a retrieval report. Each setting
is an environment variable; a variable set in the environment, even to "", replaces the default.

A rerun skips finished stages and resumes interrupted training. It stops with an error when a
setting that shapes the results differs from the one recorded in OUTPUT_DIR/.done/settings;
FORCE=1 or a new OUTPUT_DIR starts over. OUTPUT_DIR must be new, empty or an earlier run's
folder, because a stage that starts afresh deletes its output folder.

EOF
  local index
  for index in "${!SETTING_NAMES[@]}"; do
    printf "  %-28s %s\n  %-28s default: '%s'\n" "${SETTING_NAMES[$index]}" "${SETTING_HELP[$index]}" "" "${SETTING_DEFAULTS[$index]}"
  done
}

die() {
  echo "$SCRIPT_NAME: error: $*" >&2
  exit 1
}

case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) die "unknown argument '$1'; settings are environment variables, see ./$SCRIPT_NAME --help" ;;
esac

# ---------------------------------------------------------------------------------------------
# Check the settings before any work.

for flag_name in FORCE SKIP_MLM ABLATE_MLM PAIRS_HEADER; do
  [[ "${!flag_name}" == 0 || "${!flag_name}" == 1 ]] || die "$flag_name must be 0 or 1, got '${!flag_name}'"
done
if [[ "$SKIP_MLM" == 1 && "$ABLATE_MLM" == 1 ]]; then
  die "SKIP_MLM=1 and ABLATE_MLM=1 contradict each other; set one"
fi
if [[ -n "$MODEL_TYPE" && ( "$SKIP_MLM" == 1 || "$ABLATE_MLM" == 1 ) ]]; then
  die "SKIP_MLM and ABLATE_MLM need a pretrained BASE_MODEL, but MODEL_TYPE='$MODEL_TYPE' trains one from scratch"
fi
[[ -n "$MODEL_TYPE" || -n "$BASE_MODEL" ]] || die "set BASE_MODEL (a checkpoint) or MODEL_TYPE (from scratch)"
# Every setting with a default needs a value, except the prefixes ("" means no prefix) and
# BASE_MODEL (checked above against MODEL_TYPE). An empty OUTPUT_DIR would put the run in /.
for index in "${!SETTING_NAMES[@]}"; do
  name="${SETTING_NAMES[$index]}"
  case "$name" in PREFIX_QUERY | PREFIX_PASSAGE | BASE_MODEL) continue ;; esac
  if [[ -n "${SETTING_DEFAULTS[$index]}" && -z "${!name}" ]]; then
    die "$name is empty; set a value, or unset it for the default '${SETTING_DEFAULTS[$index]}'"
  fi
done
if [[ -n "$BEIR_DIR" ]]; then
  [[ -z "$MLM_INPUT_FILES$PAIRS_FILE$EVAL_CORPUS_FILE" ]] \
    || die "BEIR_DIR reads corpus and pairs from one folder; unset MLM_INPUT_FILES, PAIRS_FILE and EVAL_CORPUS_FILE"
  for required in corpus.jsonl queries.jsonl qrels/train.tsv qrels/test.tsv; do
    [[ -f "$BEIR_DIR/$required" ]] || die "BEIR_DIR='$BEIR_DIR' has no $required"
  done
else
  [[ -n "$PAIRS_FILE" ]] || die "set BEIR_DIR, or PAIRS_FILE (and MLM_INPUT_FILES) for your own files"
  [[ -f "$PAIRS_FILE" ]] || die "PAIRS_FILE='$PAIRS_FILE' not found"
  [[ "$SKIP_MLM" == 1 || -n "$MLM_INPUT_FILES" ]] || die "set MLM_INPUT_FILES for the MLM stage, or SKIP_MLM=1"
  [[ -z "$EVAL_CORPUS_FILE" || -f "$EVAL_CORPUS_FILE" ]] || die "EVAL_CORPUS_FILE='$EVAL_CORPUS_FILE' not found"
fi

read -ra mlm_input_files <<< "$MLM_INPUT_FILES"
read -ra mlm_extra_args <<< "$MLM_EXTRA_ARGS"
read -ra contrastive_extra_args <<< "$CONTRASTIVE_EXTRA_ARGS"
read -ra accelerate_args <<< "$ACCELERATE_ARGS"

DONE_DIR="$OUTPUT_DIR/.done"
MLM_DATA_DIR="$OUTPUT_DIR/data/mlm"
PAIRS_DATA_DIR="$OUTPUT_DIR/data/contrastive"
MLM_DIR="$OUTPUT_DIR/mlm"
MLM_SENTENCE_TRANSFORMER_DIR="$MLM_DIR/sentence-transformer-format"
CONTRASTIVE_DIR="$OUTPUT_DIR/contrastive"
NO_MLM_DIR="$OUTPUT_DIR/contrastive-no-mlm"
REPORT_DIR="$OUTPUT_DIR/report"

SETTINGS_FILE="$DONE_DIR/settings"
# Settings that do not change what any stage computes, so a rerun may change them. SKIP_MLM and
# ABLATE_MLM choose which stages run, and the report marker records the models it scored.
UNRECORDED_SETTINGS=" OUTPUT_DIR FORCE PYTHON ACCELERATE_ARGS EVAL_BATCH_SIZE SKIP_MLM ABLATE_MLM "

# A stage that starts afresh deletes its output folder (data/mlm, mlm, contrastive, report, ...),
# so the run may only go into a new or empty folder, or one that an earlier run created.
if [[ -e "$OUTPUT_DIR" && ! -d "$OUTPUT_DIR" ]]; then
  die "OUTPUT_DIR='$OUTPUT_DIR' is not a folder; choose a new or empty folder"
fi
if [[ -d "$OUTPUT_DIR" && ! -d "$DONE_DIR" && -n "$(ls -A "$OUTPUT_DIR")" ]]; then
  die "OUTPUT_DIR='$OUTPUT_DIR' is not empty and has no .done folder, so this pipeline did not create it;" \
    "its stages would delete folders in it (data/mlm, mlm, contrastive, report). Choose a new or empty folder."
fi

# Print NAME=VALUE for every setting that shapes the results, one a line.
print_recorded_settings() {
  local name
  for name in "${SETTING_NAMES[@]}"; do
    if [[ "$UNRECORDED_SETTINGS" != *" $name "* ]]; then
      printf '%s=%s\n' "$name" "${!name}"
    fi
  done
}

# Stop, listing each change, when a setting differs from the value recorded in SETTINGS_FILE,
# because the finished stages and checkpoints in OUTPUT_DIR were made with the recorded values.
check_settings_unchanged() {
  local current="$1" line name value
  local -A recorded=()
  local changes=()
  while IFS= read -r line; do
    if [[ "$line" == *=* ]]; then recorded["${line%%=*}"]="${line#*=}"; fi
  done < "$SETTINGS_FILE"
  while IFS= read -r line; do
    name="${line%%=*}"
    value="${line#*=}"
    if [[ -z "${recorded[$name]+set}" ]]; then
      changes+=("  $name: not recorded -> '$value'")
    elif [[ "${recorded[$name]}" != "$value" ]]; then
      changes+=("  $name: '${recorded[$name]}' -> '$value'")
    fi
  done <<< "$current"
  if [[ ${#changes[@]} != 0 ]]; then
    {
      echo "$SCRIPT_NAME: error: settings differ from the ones recorded in $SETTINGS_FILE:"
      printf '%s\n' "${changes[@]}"
      echo "$SCRIPT_NAME: the finished stages in $OUTPUT_DIR used the recorded values. Rerun with FORCE=1 to" \
        "start every stage afresh with the new ones, choose another OUTPUT_DIR, or restore the old values."
    } >&2
    exit 1
  fi
}

if [[ "$FORCE" == 1 && -d "$DONE_DIR" ]]; then
  echo "==== FORCE=1: removing $DONE_DIR, so every stage starts afresh"
  rm -rf "$DONE_DIR"
fi
mkdir -p "$DONE_DIR"
current_settings="$(print_recorded_settings)"
if [[ -f "$SETTINGS_FILE" ]]; then
  check_settings_unchanged "$current_settings"
else
  printf '%s\n' "$current_settings" > "$SETTINGS_FILE"
fi

# ---------------------------------------------------------------------------------------------
# Stage bookkeeping.

# Succeed when STAGE finished after every stage in DEPENDENCIES did.
stage_is_done() {
  local stage="$1" dependency
  shift
  [[ -f "$DONE_DIR/$stage" ]] || return 1
  for dependency in "$@"; do
    [[ "$DONE_DIR/$dependency" -nt "$DONE_DIR/$stage" ]] && return 1
  done
  return 0
}

# Succeed when STAGE was started, not finished, and started after all its DEPENDENCIES finished,
# so that its checkpoints belong to the current inputs and may be resumed.
stage_can_resume() {
  local stage="$1" dependency
  shift
  [[ -f "$DONE_DIR/$stage.started" && ! -f "$DONE_DIR/$stage" ]] || return 1
  for dependency in "$@"; do
    [[ "$DONE_DIR/$dependency" -nt "$DONE_DIR/$stage.started" ]] && return 1
  done
  return 0
}

# Print the first of INPUTS (files, folders or glob patterns) that is newer than MARKER. A folder
# counts as newer when it or a file directly in it is, as the prepare scripts read no deeper.
# Paths that no longer exist are left out.
find_input_newer_than() {
  local marker="$1" pattern path newer
  shift
  for pattern in "$@"; do
    local paths=("$pattern")
    if [[ ! -e "$pattern" ]]; then mapfile -t paths < <(compgen -G "$pattern" || true); fi
    for path in "${paths[@]}"; do
      [[ -e "$path" ]] || continue
      newer="$(find "$path" -maxdepth 1 -newer "$marker" -print -quit)"
      if [[ -n "$newer" ]]; then
        echo "$newer"
        return
      fi
    done
  done
}

# Succeed when prepare STAGE finished and none of its INPUTS changed since.
prepare_stage_is_done() {
  local stage="$1" changed
  shift
  stage_is_done "$stage" || return 1
  changed="$(find_input_newer_than "$DONE_DIR/$stage" "$@")"
  if [[ -n "$changed" ]]; then
    echo "==== $stage: input $changed changed after the stage finished; running the stage again"
    return 1
  fi
}

# Clear a stage's output folder (logging it) and marker, and stamp its start.
start_fresh() {
  local stage="$1" output="$2"
  CURRENT_STAGE="$stage"
  if [[ -e "$output" ]]; then
    echo "==== $stage: removing $output to start the stage afresh"
    rm -rf "$output"
  fi
  rm -f "$DONE_DIR/$stage"
  touch "$DONE_DIR/$stage.started"
}

CURRENT_STAGE=""

# Name the stage that Ctrl-C (SIGINT) or SIGTERM stopped and how to resume, then exit with STATUS.
# Without this trap, bash ends silently when a stage's Python process dies of SIGINT.
on_interrupt() {
  local signal="$1" status="$2"
  trap - INT TERM
  if [[ -n "$CURRENT_STAGE" ]]; then
    echo "$SCRIPT_NAME: error: stage '$CURRENT_STAGE' interrupted by $signal; later stages were not started." >&2
  else
    echo "$SCRIPT_NAME: error: interrupted by $signal between stages." >&2
  fi
  echo "$SCRIPT_NAME: rerun the same command to resume: finished stages are skipped, training resumes from its last checkpoint." >&2
  exit "$status"
}
trap 'on_interrupt SIGINT 130' INT
trap 'on_interrupt SIGTERM 143' TERM

# Print a banner with the exact command, run it, and write STAGE's marker only if it succeeds.
run_stage() {
  local stage="$1" status=0
  shift
  CURRENT_STAGE="$stage"
  printf '\n==== %s: %s\n==== command:' "$(date '+%Y-%m-%d %H:%M:%S')" "$stage"
  printf ' %q' "$@"
  printf '\n\n'
  "$@" || status=$?
  if [[ "$status" != 0 ]]; then
    echo "$SCRIPT_NAME: error: stage '$stage' failed with exit status $status; later stages were not started." >&2
    echo "$SCRIPT_NAME: fix the error above and rerun: finished stages are skipped, training resumes from its last checkpoint." >&2
    exit "$status"
  fi
  touch "$DONE_DIR/$stage"
  CURRENT_STAGE=""
  echo "==== $stage finished; marker $DONE_DIR/$stage"
}

skip_stage() {
  echo "==== $1: already finished (marker $DONE_DIR/$1); skipping. FORCE=1 reruns it."
}

# Stop unless FOLDER is a complete sentence-transformers model: modules, weights and tokenizer.
check_sentence_transformer_folder() {
  local folder="$1"
  [[ -f "$folder/modules.json" ]] || die "$folder has no modules.json, so it is not a complete sentence-transformers model; rerun with FORCE=1"
  compgen -G "$folder/*.safetensors" > /dev/null || compgen -G "$folder/*/*.safetensors" > /dev/null \
    || compgen -G "$folder/pytorch_model.bin" > /dev/null \
    || die "$folder has no model weights (*.safetensors or pytorch_model.bin); rerun with FORCE=1"
  [[ -f "$folder/tokenizer.json" || -f "$folder/vocab.txt" || -f "$folder/tokenizer_config.json" ]] \
    || die "$folder has no tokenizer files (tokenizer.json, vocab.txt or tokenizer_config.json); rerun with FORCE=1"
}

# ---------------------------------------------------------------------------------------------
# 1. and 2. MLM data and MLM training.

if [[ "$SKIP_MLM" == 0 ]]; then
  if [[ -n "$BEIR_DIR" ]]; then
    mlm_input_paths=("$BEIR_DIR/corpus.jsonl")
  else
    mlm_input_paths=("${mlm_input_files[@]}")
  fi
  if prepare_stage_is_done prepare_mlm "${mlm_input_paths[@]}"; then
    skip_stage prepare_mlm
  else
    start_fresh prepare_mlm "$MLM_DATA_DIR"
    run_stage prepare_mlm "$PYTHON" "$REPO_DIR/prepare_mlm_data.py" --input_files "${mlm_input_paths[@]}" \
      --jsonl_text_fields "$JSONL_TEXT_FIELDS" --validation_split "$MLM_VALIDATION_SPLIT" \
      --seed "$SEED" --output_dir "$MLM_DATA_DIR"
  fi

  if stage_is_done mlm prepare_mlm; then
    skip_stage mlm
  else
    if stage_can_resume mlm prepare_mlm; then
      echo "==== mlm: resuming the interrupted run in $MLM_DIR from its latest checkpoint"
    else
      start_fresh mlm "$MLM_DIR"
    fi
    if [[ -n "$MODEL_TYPE" ]]; then
      model_args=(--model_type "$MODEL_TYPE")
      if [[ -n "$CONFIG_OVERRIDES" ]]; then model_args+=(--config_overrides "$CONFIG_OVERRIDES"); fi
      if [[ -n "$TOKENIZER_VOCAB_SIZE" ]]; then
        model_args+=(--train_tokenizer_vocab_size "$TOKENIZER_VOCAB_SIZE")
      fi
    else
      model_args=(--model_name_or_path "$BASE_MODEL")
    fi
    data_args=(--train_file "$MLM_DATA_DIR/train.csv" --do_train)
    if [[ -f "$MLM_DATA_DIR/validation.csv" ]]; then
      data_args+=(--validation_file "$MLM_DATA_DIR/validation.csv" --do_eval --eval_strategy epoch)
    fi
    if [[ -n "$MLM_HEAD_WARMUP_STEPS" ]]; then model_args+=(--head_warmup_steps "$MLM_HEAD_WARMUP_STEPS"); fi
    if [[ -n "$MLM_HEAD_LEARNING_RATE" ]]; then model_args+=(--head_learning_rate "$MLM_HEAD_LEARNING_RATE"); fi
    # With no accelerate config on file, `accelerate launch` warns about every default it fills
    # in; passing the single-process defaults explicitly keeps the log quiet.
    launch_args=("${accelerate_args[@]}")
    if [[ ${#launch_args[@]} == 0 && ! -f "${HF_HOME:-$HOME/.cache/huggingface}/accelerate/default_config.yaml" ]]; then
      launch_args=(--num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no)
    fi
    run_stage mlm accelerate launch "${launch_args[@]}" "$REPO_DIR/run_mlm_pretraining.py" \
      "${model_args[@]}" "${data_args[@]}" --output_dir "$MLM_DIR" \
      --num_train_epochs "$MLM_EPOCHS" --per_device_train_batch_size "$MLM_BATCH_SIZE" \
      --per_device_eval_batch_size "$MLM_BATCH_SIZE" --learning_rate "$MLM_LEARNING_RATE" \
      --warmup_steps "$MLM_WARMUP_STEPS" --max_seq_length "$MLM_MAX_SEQ_LENGTH" \
      --save_strategy steps --save_steps "$MLM_SAVE_STEPS" --save_total_limit 2 \
      --logging_steps 10 --log_level info --report_to none --seed "$SEED" "${mlm_extra_args[@]}"
  fi
fi

# ---------------------------------------------------------------------------------------------
# 3. Query/passage pairs.

# The report reads BEIR's test qrels and EVAL_CORPUS_FILE too; listing them here makes a change
# to them rerun everything from this stage on.
if [[ -n "$BEIR_DIR" ]]; then
  pairs_input_paths=("$BEIR_DIR/corpus.jsonl" "$BEIR_DIR/queries.jsonl" "$BEIR_DIR/qrels/train.tsv" "$BEIR_DIR/qrels/test.tsv")
else
  pairs_input_paths=("$PAIRS_FILE")
  if [[ -n "$EVAL_CORPUS_FILE" ]]; then pairs_input_paths+=("$EVAL_CORPUS_FILE"); fi
fi
if prepare_stage_is_done prepare_contrastive "${pairs_input_paths[@]}"; then
  skip_stage prepare_contrastive
else
  start_fresh prepare_contrastive "$PAIRS_DATA_DIR"
  if [[ -n "$BEIR_DIR" ]]; then
    pairs_inputs=(--beir_dir "$BEIR_DIR" --qrels_split train --min_score 1)
  else
    pairs_inputs=(--input_file "$PAIRS_FILE" --input_query_col_idx 0 --input_positive_col_idx 1)
    if [[ "$PAIRS_HEADER" == 1 ]]; then pairs_inputs+=(--header); else pairs_inputs+=(--no_header); fi
  fi
  run_stage prepare_contrastive "$PYTHON" "$REPO_DIR/prepare_contrastive_data.py" "${pairs_inputs[@]}" \
    --validation_split "$CONTRASTIVE_VALIDATION_SPLIT" --seed "$SEED" --output_dir "$PAIRS_DATA_DIR"
fi

# ---------------------------------------------------------------------------------------------
# 4. and 5. Contrastive tuning, from the MLM model and (SKIP_MLM / ABLATE_MLM) from BASE_MODEL.

if [[ -n "$BEIR_DIR" ]]; then
  eval_corpus_file="$BEIR_DIR/corpus.jsonl"
else
  eval_corpus_file="$EVAL_CORPUS_FILE"
fi

# Run contrastive tuning as STAGE from MODEL into OUTPUT; DEPENDENCIES are the stages it reads.
run_contrastive_stage() {
  local stage="$1" model="$2" output="$3"
  shift 3
  if stage_is_done "$stage" "$@"; then
    skip_stage "$stage"
    return
  fi
  local resume_args=()
  if stage_can_resume "$stage" "$@" && compgen -G "$output/checkpoints/*" > /dev/null; then
    echo "==== $stage: resuming the interrupted run in $output from its latest checkpoint"
    resume_args=(--resume_from_checkpoint)
  else
    start_fresh "$stage" "$output"
  fi
  local corpus_args=()
  if [[ -n "$eval_corpus_file" ]]; then corpus_args=(--eval_corpus_file "$eval_corpus_file"); fi
  run_stage "$stage" "$PYTHON" "$REPO_DIR/run_contrastive_finetuning.py" --model_name_or_path "$model" \
    --train_file "$PAIRS_DATA_DIR/train.csv" --validation_file "$PAIRS_DATA_DIR/validation.csv" \
    "${corpus_args[@]}" --output_dir "$output" \
    --prefix_query "$PREFIX_QUERY" --prefix_passage "$PREFIX_PASSAGE" \
    --num_train_epochs "$CONTRASTIVE_EPOCHS" --per_device_train_batch_size "$CONTRASTIVE_BATCH_SIZE" \
    --learning_rate "$CONTRASTIVE_LEARNING_RATE" --warmup_ratio "$CONTRASTIVE_WARMUP_RATIO" \
    --loss_scale "$LOSS_SCALE" --max_seq_length "$CONTRASTIVE_MAX_SEQ_LENGTH" --eval_strategy epoch \
    --checkpoint_save_steps "$CONTRASTIVE_SAVE_STEPS" --seed "$SEED" \
    "${resume_args[@]}" "${contrastive_extra_args[@]}"
}

report_models=()
report_dependencies=()
if [[ -z "$MODEL_TYPE" ]]; then report_models+=("base=$BASE_MODEL"); fi
if [[ "$SKIP_MLM" == 0 ]]; then
  check_sentence_transformer_folder "$MLM_SENTENCE_TRANSFORMER_DIR"
  run_contrastive_stage contrastive "$MLM_SENTENCE_TRANSFORMER_DIR" "$CONTRASTIVE_DIR" mlm prepare_contrastive
  report_models+=("mlm=$MLM_SENTENCE_TRANSFORMER_DIR" "final=$CONTRASTIVE_DIR")
  report_dependencies+=(mlm contrastive)
  final_model="$CONTRASTIVE_DIR"
fi
if [[ "$SKIP_MLM" == 1 || "$ABLATE_MLM" == 1 ]]; then
  run_contrastive_stage contrastive_no_mlm "$BASE_MODEL" "$NO_MLM_DIR" prepare_contrastive
  report_models+=("final_no_mlm=$NO_MLM_DIR")
  report_dependencies+=(contrastive_no_mlm)
  if [[ "$SKIP_MLM" == 1 ]]; then final_model="$NO_MLM_DIR"; fi
fi

# ---------------------------------------------------------------------------------------------
# 6. The report: BM25 and every model on the same queries and corpus.

# The report marker lists the models scored, so a rerun that adds or drops one (SKIP_MLM,
# ABLATE_MLM) writes a new report.
report_marker_text="models: ${report_models[*]}"
if stage_is_done report prepare_contrastive "${report_dependencies[@]}" \
  && [[ "$(< "$DONE_DIR/report")" == "$report_marker_text" ]]; then
  skip_stage report
else
  start_fresh report "$REPORT_DIR"
  if [[ -n "$BEIR_DIR" ]]; then
    report_data=(--beir_dir "$BEIR_DIR" --qrels_split test)
  else
    report_data=(--validation_file "$PAIRS_DATA_DIR/validation.csv")
    if [[ -n "$EVAL_CORPUS_FILE" ]]; then report_data+=(--corpus_file "$EVAL_CORPUS_FILE"); fi
  fi
  run_stage report "$PYTHON" "$REPO_DIR/evaluate_retrieval.py" "${report_data[@]}" \
    --models "${report_models[@]}" --prefix_query "$PREFIX_QUERY" --prefix_passage "$PREFIX_PASSAGE" \
    --batch_size "$EVAL_BATCH_SIZE" --output_dir "$REPORT_DIR"
  printf '%s\n' "$report_marker_text" > "$DONE_DIR/report"
fi

echo
cat "$REPORT_DIR/report.md"
echo
if [[ "$SKIP_MLM" == 0 ]]; then echo "MLM model:    $MLM_SENTENCE_TRANSFORMER_DIR"; fi
echo "final model:  $final_model"
if [[ "$ABLATE_MLM" == 1 ]]; then echo "no-MLM model: $NO_MLM_DIR"; fi
echo "report:       $REPORT_DIR/report.md and report.json"
