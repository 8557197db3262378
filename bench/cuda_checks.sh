#!/bin/bash
# On a GPU host, from the repository root: the CUDA tests, then the CUDA benchmarks and a timed demo.
#
#     OUT=/tmp/cuda bash bench/cuda_checks.sh [STEP...]   # reports under $OUT (default docs/benchmarks)
#
# Steps (default all): tests (cuda_tests.log), ops (ops_cuda.md), model (model_cuda.md), demo
# (demo_cuda.md: `mrrcnn demo`'s table and how long it took). Each step has its own time limit and a
# failing step does not stop the next, so that one run on a lent machine brings back all it could measure.
# The reports name the GPU and the versions they ran with.
set -u
out=${OUT:-docs/benchmarks}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, torchvision, triton; print('torch', torch.__version__, 'torchvision',
torchvision.__version__, 'triton', triton.__version__)"

steps=" ${*:-tests ops model demo} "
want() { [[ $steps == *" $1 "* ]]; }

step() {  # step SECONDS NAME COMMAND...: run COMMAND under a time limit, say how it ended
    local limit=$1 name=$2
    shift 2
    local started=$SECONDS
    timeout "$limit" "$@"
    echo "== $name: exit $? after $((SECONDS - started)) s"
}

# The interpreter's cases run on CPU in CI; here only the compiled ones.
want tests && step 150 tests python3 -m pytest -q -p no:cacheprovider -k "not interpreter" \
    tests/ops/test_triton_kernels.py tests/ops/test_shape_aware_roi_align.py tests/engine/test_cuda.py \
    2>&1 | tee "$out/cuda_tests.log"
want ops && step 140 ops python3 bench/ops.py --devices cuda --out "$out/ops_cuda.md"
want model && step 90 model python3 bench/model.py --devices cuda --out "$out/model_cuda.md"
if want demo; then
    step 120 demo python3 -c "from mrrcnn.cli import main; main()" demo --out /tmp/demo --no-progress \
        2>&1 | tee /tmp/demo.log
    {
        echo "# \`mrrcnn demo\` on a GPU"
        echo
        echo "Made by \`mrrcnn demo\` (its defaults) in \`bench/cuda_checks.sh\` on" \
            "$(nvidia-smi --query-gpu=name --format=csv,noheader), $(date -u '+%Y-%m-%d %H:%M') UTC:" \
            "$(grep -o 'done in .* minutes' /tmp/demo.log)."
        echo
        sed 1,2d /tmp/demo/results.md
    } > "$out/demo_cuda.md"
fi
