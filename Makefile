# The two commands the README opens with:
#   make demo   — set-up on a fresh machine, then the main job on its built-in default
#   make test   — set-up, then the whole test suite (what .ci/run runs)
SHELL := /bin/bash
CARGO ?= cargo
DATA ?= $(or $(CORTEXFLOW_DATA),../shared/data)
ALICE := $(DATA)/alice_brennan2016/alice_stim_shared/DownTheRabbitHoleFinal_exp120_pad_1.TextGrid

.PHONY: setup demo extract-demo test golden bench fmt clippy clean-cache

setup:
	bash scripts/setup.sh

# Main job: the Alice fMRI analysis (pipelines/alice.toml): raw vs SAE features of every 3rd layer
# predicting six language ROIs in 20 subjects. Tables, plot and report go to runs/alice/.
demo: setup
	$(CARGO) build --release --bin cortexflow
	./target/release/cortexflow run pipelines/alice.toml -w 2
	@echo "tables, plot and report: runs/alice/ (report.md, r_by_layer.png, fits/summary/sae_quality.parquet)"

# The LM stage alone: extract the Alice story, print a per-layer summary.
extract-demo: setup
	$(CARGO) build --release --bin cortexflow
	./target/release/cortexflow extract "$(ALICE)" --out out/alice --language en

# The set-up runs beside the build (scripts/setup_and_build.sh): one waits on the network, the
# other on the CPU.
test:
	CARGO="$(CARGO)" bash scripts/setup_and_build.sh
	./target/debug/cortexflow model default
	bash scripts/test.sh

# Behaviour fingerprint: reduced alice, alice-taxonomy and natural-stories runs, every Parquet
# table's sha256 compared with tests/fixtures/golden/SHA256SUMS (scripts/golden.sh).
golden: setup
	$(CARGO) build --bin cortexflow
	bash scripts/golden.sh

bench: setup
	$(CARGO) bench --bench extract_throughput
	$(CARGO) bench --bench ridge_vs_himalaya
	$(CARGO) bench --bench lmm_vs_lme4
	$(CARGO) bench --bench sae_vs_numpy
	$(CARGO) bench --bench incremental
	$(CARGO) bench --bench voxelwise

fmt:
	$(CARGO) fmt

clippy:
	$(CARGO) clippy --all-targets

clean-cache:
	rm -rf "$${CORTEXFLOW_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/cortexflow}/models/smollm2-135m-instruct"
