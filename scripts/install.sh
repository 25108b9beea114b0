#!/usr/bin/env bash
# Install ichd for development into the active Python environment.
# torch is pinned to 2.13.0, whose CPU wheel lies on this machine's disk: installing it first keeps pip
# from fetching a multi-GB CUDA build. Do not install torchvision or timm beside it.
set -euo pipefail
python -m pip install -q "torch==2.13.0"
# blast-ct: the optional second reader (ichd predict --second-reader blast-ct); its tests run in the default set
python -m pip install -q -e ".[dev,blast-ct]"
