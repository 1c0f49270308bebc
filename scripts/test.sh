#!/usr/bin/env bash
# Set up .venv, then run the fast tests (a few minutes on a CPU). Arguments go to pytest, e.g.
#
#   ./scripts/test.sh            # fast tests
#   ./scripts/test.sh -m slow    # slow tests: real model and Cranfield data, see README
set -euo pipefail
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO_DIR/scripts/setup_venv.sh"
cd "$REPO_DIR"
exec python -m pytest "$@"
