#!/usr/bin/env bash
# Install what botledger needs on a fresh Debian or Ubuntu machine: a virtual environment with
# the project and its test tools in .venv, and Debian's chromium when no Chromium is present.
# Safe to run again: every step checks first.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

if [ ! -x /usr/bin/chromium ] && [ -z "${BOTLEDGER_CHROMIUM_PATH:-}" ]; then
    echo "Installing Debian's chromium package" >&2
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    echo "Creating the virtual environment in .venv" >&2
    "$PYTHON" -m venv .venv
fi

# Reinstall only when pyproject.toml changed since the last install.
stamp=.venv/.botledger-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "Installing botledger and its dependencies into .venv" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
    touch "$stamp"
fi
