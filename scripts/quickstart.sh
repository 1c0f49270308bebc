#!/usr/bin/env bash
# Set up .venv, then run the whole pipeline offline on the example data: a tiny BERT trained from
# scratch with its own tokenizer, contrastive tuning and the report, in minutes on a CPU.
#
#   ./scripts/quickstart.sh
#
# Writes outputs/quickstart/ (report in outputs/quickstart/report/report.md).
set -euo pipefail
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO_DIR/scripts/setup_venv.sh"
exec "$REPO_DIR/examples/quickstart.sh"
