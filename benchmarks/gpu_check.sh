#!/usr/bin/env bash
# The GPU check: on a machine with a CUDA device, every CUDA / compiled-Triton test and the GPU
# benchmarks, in one call, with a short report. Without a GPU it says so and exits 0.
#
#   bash benchmarks/gpu_check.sh            # from the repository root, after `pip install ".[test]"`
#
# The report (stdout, and $OUT/gpu_report.txt when OUT is set) lists the device, the test counts
# (a CUDA test that skips on a machine with a GPU counts as a failure) and the benchmark medians.
set -uo pipefail
cd "$(dirname "$0")/.."
report=${OUT:-.}/gpu_report.txt
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA device here; nothing to check" | tee "$report"
  exit 0
fi
{
  echo "# fastseg GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  python -c "import fastseg, json; from fastseg import _native; print(json.dumps(_native.build_info()))"
} | tee "$report"
status=0
# Tests: every file with CUDA or compiled-Triton cases; -rs lists skips, which must not mention CUDA.
timeout 420 pytest -q -p no:cacheprovider -rs \
  tests/test_gpu_parity.py tests/test_accumulate.py tests/test_export.py tests/test_components.py \
  tests/test_resample.py tests/test_normalize.py tests/test_triton_normalize.py tests/test_tiling.py \
  "tests/test_predict.py::test_cuda_predictor_keeps_the_case_on_the_device_and_agrees_with_cpu" \
  "tests/test_data_augment.py::test_gpu_matches_cpu_for_deterministic_augmentations" \
  "tests/test_train.py::test_cuda_training_with_amp_and_dali_gpu_batches_lowers_the_loss" 2>&1 | tail -n 30 | tee -a "$report"
rc=${PIPESTATUS[0]}
[[ $rc -eq 0 ]] || status=1
if grep -qiE "SKIPPED.*(cuda|gpu)" "$report"; then
  echo "gpu_check: CUDA tests skipped on a machine with a GPU" | tee -a "$report"; status=1
fi
# Benchmarks on the device (the cases whose id names cuda), a few rounds each.
timeout 200 pytest -q -p no:cacheprovider benchmarks -k "cuda or gpu" --benchmark-min-rounds=3 \
  --benchmark-columns=median,rounds 2>&1 | tail -n 40 | tee -a "$report"
echo "gpu_check: exit $status" | tee -a "$report"
exit $status
