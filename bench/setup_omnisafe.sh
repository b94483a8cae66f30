#!/usr/bin/env bash
# OmniSafe 0.5.0's environment, for running it side by side with alignloop on the navigation
# tasks: pyenv's Python 3.11 (where the CPU build of torch installs), OmniSafe's own pandas pin
# (2.0.3), and safety-gymnasium 1.0.0 with its pins (gymnasium 0.28.1, gymnasium-robotics 1.2.2,
# mujoco 2.3.3, and so numpy 1.23.5: gymnasium-robotics 1.2.2 needs numpy < 1.24) except pygame
# 2.1.0, which has no wheel for 3.11 and which the navigation tasks do not import. On 3.11 safety-gymnasium 1.0.0 fails at import: 12
# dataclass fields take a numpy array as their default (`color: np.array = COLOR['goal']`, ...),
# which dataclasses refuse there; this script gives each of them
# `field(default_factory=lambda: COLOR[...])` in the installed copy (the same array, built when
# an instance is), and changes nothing else. That fix belongs to this benchmark environment
# only, never to alignloop's dependencies.
#
#   bash bench/setup_omnisafe.sh [VENV]        (default bench/.venv-omnisafe; idempotent)
#
# OMNISAFE_PYTHON: the Python 3.11 to use (default pyenv's 3.11.7); TORCH_WHEEL: a torch wheel
# file to install (default: /opt/wheels' CPU build when present, else torch from the registry).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-$here/.venv-omnisafe}"
check='import omnisafe, safety_gymnasium
env = safety_gymnasium.make("SafetyPointGoal1-v0")
env.reset(seed=0)
env.step(env.action_space.sample())
print("omnisafe", omnisafe.__version__, "safety-gymnasium", safety_gymnasium.__version__)'
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
    exit 0
fi
python="${OMNISAFE_PYTHON:-$(pyenv root 2>/dev/null)/versions/3.11.7/bin/python}"
if [ ! -x "$python" ]; then
    echo "setup_omnisafe.sh: no Python 3.11 at $python; install it (pyenv install 3.11.7)" \
        "or point OMNISAFE_PYTHON at one" >&2
    exit 1
fi
wheel="${TORCH_WHEEL:-$(ls /opt/wheels/torch-*+cpu-cp311-*.whl 2>/dev/null | head -n 1 || true)}"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet)
"${pip[@]}" --upgrade pip
"${pip[@]}" "${wheel:-torch}" "numpy==1.23.5"
"${pip[@]}" --no-deps "safety-gymnasium==1.0.0"
"${pip[@]}" "numpy==1.23.5" "gymnasium==0.28.1" "gymnasium-robotics==1.2.2" "mujoco==2.3.3" \
    "xmltodict>=0.13.0" "pyyaml>=6.0" "imageio>=2.27.0"
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
fixed=0
for file in $(grep -rlE "^ +color: np\.array = COLOR\['[a-z_]+'\]$" "$site/safety_gymnasium"); do
    sed -i -E "s/^( +color: np\.array = )(COLOR\['[a-z_]+'\])$/\1field(default_factory=lambda: \2)/" "$file"
    sed -i -E 's/^from dataclasses import dataclass$/from dataclasses import dataclass, field/' "$file"
    fixed=$((fixed + 1))
done
echo "setup_omnisafe.sh: gave $fixed dataclass colour fields a default_factory"
"${pip[@]}" --no-deps "omnisafe==0.5.0"
"${pip[@]}" "numpy==1.23.5" "pandas==2.0.3" "tensorboard>=2.8.0" "wandb>=0.13.0" "moviepy>=1.0.0" \
    "typing-extensions>=4.0.0" "typer[all]>=0.7.0" "seaborn>=0.12.2" "matplotlib>=3.7.1" "gdown>=4.6.0"
"$venv/bin/python" -c "$check"
