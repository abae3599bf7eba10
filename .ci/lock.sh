#!/usr/bin/env bash
# Remake requirements.lock (`make lock`): a fresh venv in a scratch directory, torch from
# TORCH_SPEC as the Makefile installs it, then `pip install -e '.[dev]'` resolving the rest from
# pyproject.toml's ranges, and `pip freeze` of the result less torch (the Makefile's own step,
# so a GPU user's torch stays), its CUDA packages (nvidia-*, triton) and the project itself.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-torch==2.13.0}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

$python -m venv "$scratch/venv"
py="$scratch/venv/bin/python"
"$py" -m pip install -q $torch_spec
"$py" -m pip install -q -e '.[dev]'
{
    echo "# Every package \`make\` installs into .venv (the dev extras included), pinned. Not here:"
    echo "# torch, which the Makefile installs first (TORCH_SPEC, the CPU build, unless the venv has"
    echo "# a torch already), and wine-init itself, installed after this file with --no-deps."
    echo "# Made by \`make lock\` (.ci/lock.sh): in a fresh venv, $torch_spec, then"
    echo "# \`pip install -e '.[dev]'\`, then \`pip freeze --exclude-editable\` less torch, nvidia-*"
    echo "# and triton. To update: \`make lock\`, then the tests (docs/dependencies.md)."
    echo "# Python $("$py" -c 'import platform; print(platform.python_version(), platform.system(), platform.machine())')"
    "$py" -m pip freeze --exclude-editable | grep -viE '^(torch==|nvidia-|triton==|wine-init==|-e |#)'
} > "$scratch/requirements.lock"
if cmp -s "$scratch/requirements.lock" requirements.lock; then
    # left untouched, so the install stamp stays newer and `make` does not reinstall
    echo "requirements.lock is unchanged"
else
    cp "$scratch/requirements.lock" requirements.lock
    echo "wrote requirements.lock ($(grep -vc '^#' requirements.lock) packages)"
fi
