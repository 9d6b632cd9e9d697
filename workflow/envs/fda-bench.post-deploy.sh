#!/usr/bin/env bash
# Runs once inside the freshly created conda env (snakemake post-deploy script): installs the
# fda-bench package of this checkout, so rules can call `fda-bench`.
set -euo pipefail
pip install --no-deps -e "$(dirname "$0")/../.."
