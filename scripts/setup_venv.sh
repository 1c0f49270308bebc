# Create or reuse the virtual environment .venv and install the requirements into it; sourced by
# the other scripts. Settings: VENV_DIR (default: .venv in the repository), TORCH_SPEC (the pip
# requirement for torch, installed first and only when torch is missing; default: torch==2.13.0,
# which PyPI serves as a CUDA build on Linux; see README for a CPU-only build).

REPO_DIR="${REPO_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
VENV_DIR="${VENV_DIR:-$REPO_DIR/.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

if [[ ! -x "$VENV_DIR/bin/python" ]]; then
  echo "==== creating the virtual environment $VENV_DIR"
  python3 -m venv "$VENV_DIR"
fi
# shellcheck disable=SC1091
source "$VENV_DIR/bin/activate"

# The stamp is newer than both requirement files once they are installed, so reruns skip pip.
install_stamp="$VENV_DIR/.requirements-installed"
if [[ ! -f "$install_stamp" || "$REPO_DIR/requirements.txt" -nt "$install_stamp" \
      || "$REPO_DIR/requirements-dev.txt" -nt "$install_stamp" ]]; then
  if ! python -c "import torch" 2> /dev/null; then
    echo "==== installing $TORCH_SPEC"
    read -ra torch_requirement <<< "$TORCH_SPEC"
    python -m pip install "${torch_requirement[@]}"
  fi
  echo "==== installing requirements-dev.txt (which includes requirements.txt)"
  python -m pip install -r "$REPO_DIR/requirements-dev.txt"
  touch "$install_stamp"
fi
