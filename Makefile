# hyperlet — a CRI runtime that runs every pod in its own micro-VM.
# `make help` lists the targets.

GO      ?= go
OUT     := _output
# The guest's OCI runtime: crun (C, 0.5 MB) starts containers ~5x faster
# than runc under TCG (docs/performance.md); RUNTIME=/usr/sbin/runc works too.
RUNTIME ?= /usr/bin/crun
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

# Pinned code generators (make generate). protoc is Debian's protobuf-compiler.
PROTOC_GEN_GO_VERSION    := v1.36.12
PROTOC_GEN_TTRPC_VERSION := v1.2.10

.DEFAULT_GOAL := help
.PHONY: help deps build agent initrd kernel guest installer-image kube test test-unit fuzz bench-vm bench bench-density soak demo generate clean gvisor

help: ## list targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

deps: ## install the Debian packages hyperlet builds and runs with (idempotent)
	hack/install-deps.sh

build: ## build the hyperlet daemon and the hyperctl CLI
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(OUT)/hyperlet ./cmd/hyperlet
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(OUT)/hyperctl ./cmd/hyperctl

agent: ## build the guest agent (static)
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(OUT)/hyperlet-agent ./guest/agent

initrd: agent ## build initrd.img (agent + crun) and initrd-test.img (also busybox, for tests and debugging)
	$(GO) run ./guest/initrd -o $(OUT)/initrd.img -agent $(OUT)/hyperlet-agent -runtime $(RUNTIME)
	$(GO) run ./guest/initrd -o $(OUT)/initrd-test.img -agent $(OUT)/hyperlet-agent -runtime $(RUNTIME) -busybox /bin/busybox

kernel: ## build the guest kernel (cached per machine by source version and config)
	guest/kernel/build.sh $(OUT)/vmlinux

guest: kernel initrd ## build everything that goes into a pod VM

installer-image: build guest ## build the node installer image archive (_output/hyperlet-installer.tar), no Docker needed
	$(GO) run ./hack/installer-image -o $(OUT)/hyperlet-installer.tar -bin $(OUT)

KUBE_BINARIES = kubelet kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl etcd

kube: ## build kubelet, the control plane, kubectl and etcd from their Go modules for the end-to-end tests (cached per machine)
	hack/kube.sh $(KUBE_BINARIES)

test: deps guest kube ## run the whole test suite under the race detector, VM tests and the kubelet end-to-end test included (under TCG where KVM cannot boot the guest), then the fuzz targets briefly
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 45m ./...
	$(MAKE) fuzz

# Fuzz targets: package and target name. Found inputs are kept in each
# package's testdata/fuzz, which every `go test` replays.
FUZZ_TARGETS := pkg/imageservice/unpack:FuzzApply api/agent/v1:FuzzFrameReader pkg/oci:FuzzSpec pkg/sandbox:FuzzPodConfig
# A count, not a duration: a duration-bounded run can fail with "context
# deadline exceeded" when a worker is mid-input at the deadline on a loaded
# machine (go.dev/issue/75804). 100000 inputs take 5-20 s per target here.
FUZZTIME ?= 100000x
fuzz: ## run each fuzz target for FUZZTIME (default 100000 inputs; a duration such as 10m also works)
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$name ($$pkg) for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) ./$$pkg; \
	done

test-unit: ## run the tests that need no VM
	HYPERLET_SKIP_VM_TESTS=1 $(GO) test -count=1 ./...

bench-vm: deps guest ## benchmark cold boot to agent-ready and host memory per idle VM
	$(GO) run ./hack/bench-vm -output $(OUT)

BENCH_N ?= 20
bench: deps guest build ## hyperlet (cold boot, template clone, warm pool) vs containerd+runc and containerd+gVisor, same run; table + chart to docs/bench
	hack/registry.sh up >/dev/null
	$(GO) run ./hack/bench -n $(BENCH_N) -gvisor "$$(hack/gvisor.sh | tail -1)" -out docs/bench

gvisor: ## build gVisor's runsc and containerd shim from the gvisor.dev/gvisor Go module for the bench (cached per machine)
	hack/gvisor.sh

DENSITY ?= 400
SOAK ?= 1h
soak: deps guest build ## churn pods (create, exec, logs, remove) with 4 clients for $(SOAK), then kill -9 the daemon in a burst of 20 starts; table to docs/soak.md (not in CI)
	hack/registry.sh up >/dev/null
	$(GO) run ./hack/soak -duration $(SOAK) -out docs/soak.md

bench-density: deps guest build ## ramp hyperlet up to $(DENSITY) idle pods, check each is Ready and exec-able, tear down
	hack/registry.sh up >/dev/null
	$(GO) run ./hack/bench -density $(DENSITY) -out docs/bench

demo: deps guest build ## install, build, set up a pod network and registry, start hyperlet, run demo pods with hyperctl
	hack/demo.sh

generate: ## regenerate the agent API code with the pinned generators
	GOBIN=$(CURDIR)/$(OUT)/tools $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(CURDIR)/$(OUT)/tools $(GO) install github.com/containerd/ttrpc/cmd/protoc-gen-go-ttrpc@$(PROTOC_GEN_TTRPC_VERSION)
	PATH=$(CURDIR)/$(OUT)/tools:$$PATH protoc -I api/agent/v1 \
		--go_out=paths=source_relative:api/agent/v1 \
		--go-ttrpc_out=paths=source_relative:api/agent/v1 api/agent/v1/agent.proto

clean: ## remove build output (the kernel cache in ~/.cache/hyperlet stays)
	rm -rf $(OUT)
