#!/usr/bin/env bash
# Installs the readers that tests/env_formats.rs checks vaultlet's encodings
# against (npm `dotenv`, python-dotenv, PyYAML), once, into the user's cache
# folder, and prints where they are as KEY=VALUE lines.
#
#   scripts/env-parsers.sh
set -euo pipefail

# The docker CLI (its --env-file parser; no engine is needed), systemd's
# env-file parser (systemd-analyze) and a private mount namespace (unshare)
# come from Debian packages, installed only when the command is missing.
need=()
command -v docker >/dev/null || need+=(docker.io)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v unshare >/dev/null || need+=(util-linux)
command -v node >/dev/null || need+=(nodejs npm)
if [ ${#need[@]} -gt 0 ]; then
    echo "env-parsers: installing ${need[*]} (apt-get)" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

cache="${XDG_CACHE_HOME:-$HOME/.cache}/vaultlet-env-parsers"
node_dotenv=16.6.1
python_dotenv=1.0.1
pyyaml=6.0.2

node_dir="$cache/node-dotenv-$node_dotenv"
if [ ! -f "$node_dir/node_modules/dotenv/package.json" ]; then
    command -v npm >/dev/null || { echo "env-parsers: npm not found (apt-get install npm)" >&2; exit 1; }
    mkdir -p "$node_dir"
    npm install --prefix "$node_dir" --no-audit --no-fund --silent "dotenv@$node_dotenv" >&2
fi

py_dir="$cache/python-dotenv-$python_dotenv"
if [ ! -f "$py_dir/dotenv/__init__.py" ]; then
    command -v python3 >/dev/null || { echo "env-parsers: python3 not found" >&2; exit 1; }
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$py_dir" "python-dotenv==$python_dotenv" >&2
fi

yaml_dir="$cache/pyyaml-$pyyaml"
if [ ! -f "$yaml_dir/yaml/__init__.py" ]; then
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$yaml_dir" "pyyaml==$pyyaml" >&2
fi

echo "NODE_DOTENV=$node_dir/node_modules/dotenv"
echo "PYTHON_DOTENV=$py_dir"
echo "PYYAML=$yaml_dir"
