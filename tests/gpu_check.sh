#!/usr/bin/env bash
# The GPU checks (issue 7) as one short run on a GPU machine lent by the device tool:
#   here:   make gpu-wheels                 # Python 3.12 wheels that machine lacks → .whl/
#   there:  bash tests/gpu_check.sh         # run with carry [".whl"]; results in $OUT
# The CUDA tests (networks, landmark path and the daemon's cuda pipeline against the CPU and
# MediaPipe, and streamed by its frame loop; the torch generator and the stream pipeline on
# CUDA), then `bench`'s engines table (cpu vs cuda vs tensorrt at 720p and 1080p). Exits
# non-zero when either fails.
set -uo pipefail
out=${OUT:-out/gpu-check}
python=${PYTHON:-python3}
mkdir -p "$out"
if [ -d .whl ]; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/thc-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/thc-site
fi
export PYTHONPATH="$PWD:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$python" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda,
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else "(no CUDA device)")'
} 2>&1 | tee "$out/device.txt"
"$python" -m pytest -q -p no:cacheprovider -rs tests/test_cuda_path.py tests/test_gpu_path.py \
  tests/test_graphed_networks.py \
  tests/test_torch_generator.py tests/test_cuda_stream.py tests/test_device_loop.py \
  tests/test_engines_select.py \
  2>&1 | tee "$out/tests.txt"
tests=${PIPESTATUS[0]}
"$python" -m thc_tools --config config.yaml bench --frames 60 --paced-s 0 --warp-runs 0 \
  --engine-frames "${ENGINE_FRAMES:-300}" 2>&1 | tee "$out/bench.txt"
bench=${PIPESTATUS[0]}
exit $((tests || bench))
