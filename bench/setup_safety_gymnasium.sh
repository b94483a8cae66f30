#!/usr/bin/env bash
# The reference environment of bench/nav_vs_safety_gymnasium.py: safety-gymnasium 1.0.0, installed
# unchanged with its own pins (gymnasium 0.28.1, mujoco 2.3.3, pygame 2.1.0), in pyenv's Python
# 3.10.13 (pygame 2.1.0 has no wheel for 3.11, and 1.0.0 fails to import there). Idempotent: an
# existing environment that imports safety_gymnasium is kept. Takes about a minute.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-$here/.venv-safety-gymnasium}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import safety_gymnasium" 2>/dev/null; then
    exit 0
fi
python="${SAFETY_GYMNASIUM_PYTHON:-$(pyenv root 2>/dev/null)/versions/3.10.13/bin/python}"
if [ ! -x "$python" ]; then
    echo "setup_safety_gymnasium.sh: no Python 3.10 at $python; install it (pyenv install 3.10.13)" \
        "or point SAFETY_GYMNASIUM_PYTHON at one" >&2
    exit 1
fi
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "safety-gymnasium==1.0.0"
"$venv/bin/python" -c "import safety_gymnasium, mujoco; print('safety-gymnasium', safety_gymnasium.__version__, 'mujoco', mujoco.__version__)"
