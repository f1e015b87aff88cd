# The README's two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
DEMO_OUT ?= demo-out

.PHONY: demo test install dev clean bench docs weights-generator weights-colour weights-students weights-consistency \
        weights-families weights-decoder weights-classifier weights-prompts weights-detector

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch/torchvision are pinned in pyproject.toml; pip takes them from the machine's local wheel store
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e '.[dev,ray,text]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(VENV)/bin/ddpm-guard sample --n 64 --fast --out $(DEMO_OUT)/samples --seed 0
	$(VENV)/bin/ddpm-guard demo --out $(DEMO_OUT)
	$(VENV)/bin/ddpm-guard scan --key $(DEMO_OUT)/demo.key $(DEMO_OUT)/watermarked $(DEMO_OUT)/edited $(DEMO_OUT)/plain $(DEMO_OUT)/real
	@echo "open $(DEMO_OUT)/samples/grid.png"

test: $(VENV)/.installed-dev
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

# docs/cli.md is generated from the parser; tests/test_docs.py fails when it is stale
docs: $(VENV)/.installed
	$(PY) docs/cli_reference.py

bench: $(VENV)/.installed-dev
	$(PIP) install -q diffusers
	$(PY) bench/speed.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache

# ---- rebuilding the bundled weights, each from its seed (times: this project's 2-core CPU; docs/weights.md) ----
# Each target writes under runs/ and then copies into the package's weights folder. Runs stopped by a wall-time
# limit (--max-minutes) reproduce up to where the limit fell; the step counts below are the ones the bundled
# folders record.
DG := $(VENV)/bin/ddpm-guard

weights-generator: $(VENV)/.installed  # generator/weights/mnist5k: 85 min
	$(DG) train --data mnist5k --out runs/mnist5k --steps 8315 --batch-size 64 --lr 4e-4 --warmup-steps 300 \
	  --base-channels 32 --channel-mult 1 2 2 --attention-resolutions 7 --ema-decay 0.999 --precision bf16 --seed 0 \
	  --checkpoint-every 500
	cp runs/mnist5k/config.json runs/mnist5k/model.safetensors generator/weights/mnist5k/

weights-colour: $(VENV)/.installed  # generator/weights/photos32: 56 min
	$(DG) train --data photos32 --out runs/photos32 --steps 4000 --batch-size 64 --lr 4e-4 --warmup-steps 300 \
	  --image-size 32 --channels 3 --base-channels 32 --channel-mult 1 2 2 --attention-resolutions 8 --ema-decay 0.999 \
	  --precision bf16 --seed 0 --checkpoint-every 500 --unconditional
	cp runs/photos32/config.json runs/photos32/model.safetensors generator/weights/photos32/

weights-students: $(VENV)/.installed  # generator/weights/mnist5k-student{8,4,2}: 48 + 11 + 11 min
	$(DG) weights distill --steps 8 --teacher-steps 32 --max-steps 2000 --teacher-precision bf16 --out runs/distill/s8
	$(DG) weights distill --teacher runs/distill/s8 --steps 4 --teacher-steps 8 --max-steps 1000 --out runs/distill/s4
	$(DG) weights distill --teacher runs/distill/s4 --steps 2 --teacher-steps 4 --max-steps 1000 --out runs/distill/s2
	for n in 8 4 2; do mkdir -p generator/weights/mnist5k-student$$n; \
	  cp runs/distill/s$$n/config.json runs/distill/s$$n/model.safetensors generator/weights/mnist5k-student$$n/; done

weights-consistency: $(VENV)/.installed  # generator/weights/mnist5k-consistency (sample --fast): 95 min, one core
	OMP_NUM_THREADS=1 $(DG) weights distill --method consistency --steps 4 --teacher-steps 40 --max-steps 4000 \
	  --max-minutes 95 --out runs/cd4
	mkdir -p generator/weights/mnist5k-consistency
	cp runs/cd4/config.json runs/cd4/model.safetensors generator/weights/mnist5k-consistency/

weights-families: $(VENV)/.installed  # detector/weights/families/{vae,gan}; ddpm-b and ddpm-d are `train` runs (docs/weights.md)
	$(DG) weights family --kind vae --out detector/weights/families/vae --steps 3000 --seed 0
	$(DG) weights family --kind gan --out detector/weights/families/gan --steps 12000 --seed 0

weights-decoder: $(VENV)/.installed  # watermark/weights/decoder: 27 + 45 + 3 + 5 min
	$(DG) weights decoder train --out runs/decoder --steps 8000 --seed 0
	$(DG) weights decoder views --decoder runs/decoder --views id,sx,sy,unbright --weights 0.7,0.1,0.1,0.1
	$(DG) weights reader make --n 5120 --out runs/reader/marks.safetensors --decoder runs/decoder
	$(DG) weights reader train runs/reader/marks.safetensors --out runs/reader/r --steps 3000 --seed 0 --decoder runs/decoder
	$(DG) weights decoder reader --decoder runs/decoder runs/reader/r
	$(DG) weights decoder calibrate --decoder runs/decoder --n-samples 500
	cp runs/decoder/decoder.json runs/decoder/decoder.safetensors runs/decoder/reader.safetensors watermark/weights/decoder/

weights-classifier: $(VENV)/.installed  # generator/weights/digit_classifier: 2 min
	$(DG) weights classifier

weights-prompts: $(VENV)/.installed-dev  # generator/weights/prompts: 1 min
	$(DG) weights prompts

weights-detector: $(VENV)/.installed  # detector/weights/default: the training its config.json records
	$(DG) detector train --out detector/weights/default --input raw --background-floor 32 --epochs 100 --augment-p 0.5 \
	  --seed 0 --fake-generator bundled --fake-generator detector/weights/families/ddpm-b \
	  --fake-generator detector/weights/families/vae --fake-generator detector/weights/families/gan
