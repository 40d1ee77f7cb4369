# Strongroom developer entry points. Everything runs through uv in one workspace
# environment (.venv); uv itself is bootstrapped with pip when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo .bootstrap/bin/uv)
UV_DEP := $(if $(filter .bootstrap/bin/uv,$(UV)),.bootstrap/bin/uv,)
PROTO_SOURCES := $(shell find proto -name '*.proto')
PROTO_STAMP := libs/proto/src/strongroom/.generated
PYTEST_ARGS ?=
CARGO := $(shell command -v cargo 2>/dev/null)
NATIVE_LIB := agent/src/strongroom_agent/_native.abi3.so
# Copied here first, then renamed over NATIVE_LIB: an agent running the old library keeps its mapping.
# Named like the library (gitignored, kept out of the wheel) but not importable as the module.
NATIVE_TMP := agent/src/strongroom_agent/_native.abi3.tmp.so

.PHONY: run test sync native proto lint typecheck unit check prefetch clean packages images deploy-check deploy-topics

## run: start every service against embedded backends and back up a demo directory (Ctrl-C stops)
run: sync
	@# gRPC warns about fork() when the runner starts child processes; they exec at once, so fork support is not needed.
	GRPC_ENABLE_FORK_SUPPORT=0 $(UV) run strongroom standalone $(if $(DIR),--backup-dir "$(DIR)",)

## test: lint, type-check and run every test against real Kafka, PostgreSQL and S3
test: sync lint typecheck prefetch deploy-check
	$(UV) run pytest $(PYTEST_ARGS)

.bootstrap/bin/uv:
	$(PYTHON) -m venv .bootstrap
	.bootstrap/bin/pip install --quiet "uv==$(UV_VERSION)"

$(PROTO_STAMP): $(PROTO_SOURCES) tools/gen_protos.py $(UV_DEP)
	$(UV) run --no-project --with grpcio-tools==1.85.1 --with mypy-protobuf==5.1.0 --with googleapis-common-protos==1.76.0 python tools/gen_protos.py
	touch $@

## proto: generate the protobuf/gRPC package from proto/
proto: $(PROTO_STAMP)

## sync: create/refresh the workspace environment from uv.lock (and build the agent's native extension)
sync: $(PROTO_STAMP)
	$(UV) sync --frozen
	@$(MAKE) --no-print-directory native

## native: build the agent's native small-file reader with the pinned toolchain into the agent's package
## (ADR 0080; gitignored, so never packaged). Without cargo the agent reads on its Python path; with
## cargo a failing build fails the target (CI must not fall back silently).
native:
ifeq ($(CARGO),)
	@echo "native: cargo not found; the agent reads small files on its Python path (ADR 0080)"
else
	cd native && $(CARGO) build --release --locked --quiet
	cp native/target/release/lib_native.so $(NATIVE_TMP)
	mv -f $(NATIVE_TMP) $(NATIVE_LIB)
endif

.PHONY: openapi
## openapi: regenerate docs/api/openapi.yaml from the protos' google.api.http rules (ADR 0052)
openapi: sync
	$(UV) run python -m strongroom_api.openapi docs/api/openapi.yaml

## prefetch: download and build the real servers the tests start (cached between runs)
prefetch: sync
	$(UV) run python -m strongroom_servers prefetch

lint: sync
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run lint-imports

typecheck: sync
	$(UV) run mypy libs/zones/src libs/telemetry/src libs/platform/src libs/servers/src libs/testing/src libs/cli/src agent/src \
		services/scheduler/src services/catalog/src services/billing/src services/agent-gateway/src services/restore/src services/api/src

## images: build the services and agent OCI images into build/images (root, mmdebstrap, umoci; ADR 0044)
images: sync
	UV=$(if $(filter .bootstrap/bin/uv,$(UV)),$(abspath $(UV)),$(UV)) $(UV) run python tools/images/build.py

## deploy-check: render every kustomization under deploy/, validate offline (kubernetes-validate), lint (kube-score)
deploy-check: sync
	$(UV) run python tools/deploy/check.py

## deploy-topics: regenerate the overlays' Strimzi KafkaTopics from proto/topics/
deploy-topics: sync
	$(UV) run python tools/deploy/kafka_topics.py --all

## unit: the fast tests only (no real servers)
unit: sync
	$(UV) run pytest -m "not integration and not e2e" $(PYTEST_ARGS)

clean:
	rm -rf .venv .bootstrap libs/proto/src/strongroom native/target $(NATIVE_LIB) $(NATIVE_TMP)

## packages: the strongroom-agent .deb and .rpm, and apt/yum repository layouts, into dist/ (ADR 0045)
packages: sync
	$(UV) run python tools/packages/build.py --out dist

.PHONY: console-vendor
## console-vendor: re-download the pinned htmx through the npm registry, verify its sha512 and rewrite the vendored copy (ADR 0054)
console-vendor: sync
	$(UV) run python tools/console/vendor_htmx.py
