#!/usr/bin/env bash
# Label Studio's own environment, for the side-by-side of `bench/platform_vs_label_studio.py`:
# label-studio 1.23.2 from the registry (about 1 GB with its dependencies) and uWSGI, the server
# its production deployment runs it under. Nothing of it is patched; it runs offline.
#
#   bash bench/setup_label_studio.sh [VENV]        (default bench/.venv-label-studio; idempotent)
#
# LABEL_STUDIO_PYTHON: the Python to build it with (default pyenv's 3.11.7, else python3).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-$here/.venv-label-studio}"
if [ -x "$venv/bin/python" ] && [ -x "$venv/bin/uwsgi" ] \
    && "$venv/bin/python" -c 'import label_studio; assert label_studio.__version__ == "1.23.2"' >/dev/null 2>&1; then
    exit 0
fi
python="${LABEL_STUDIO_PYTHON:-$(pyenv root 2>/dev/null)/versions/3.11.7/bin/python}"
[ -x "$python" ] || python="$(command -v python3)"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "label-studio==1.23.2" "uWSGI==2.0.31"
"$venv/bin/python" -c 'import label_studio; print("label-studio", label_studio.__version__)'
