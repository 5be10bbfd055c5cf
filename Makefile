# Benchmarks. `make bench` measures every figure in one run and writes
# bench/RESULTS.md, bench/profile-reads.txt and the plots (about fifty
# minutes); `make bench-smoke` proves the harness works in a minute or two,
# judges nothing and writes its table to a temporary folder.

GO ?= go
export PATH := $(PATH):/usr/local/go/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: bench bench-smoke bench-deps sim

# The long simulation sweep (docs/simulation.md): 700 seeds of 4 simulated
# hours, 2 to 6 replicas each, at least 10,000 fleet-hours. Its last line
# is the FIGURE line; a violation fails it with the command that replays
# the seed. (Run in the package's directory, go test shows the test's
# output even when it passes.)
sim:
	cd internal/sim && $(GO) test -run 'TestSimulation$$' -count=1 -timeout 0 -args -seeds=700 -hours=4

bench: bench-deps
	cd bench && $(GO) run .

bench-smoke: bench-deps
	cd bench && $(GO) run . -smoke

# wrk and redis-server from Debian's packages, when missing; apt-get update
# runs only when the install fails without it (a fresh machine).
bench-deps:
	@if ! command -v wrk >/dev/null || ! command -v redis-server >/dev/null; then \
		echo "installing wrk and redis-server"; \
		export DEBIAN_FRONTEND=noninteractive; \
		$(SUDO) apt-get install -y -qq wrk redis-server >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk redis-server >/dev/null; }; \
	fi

# Releases and the Helm chart. `make release` builds dist/ (static binaries
# for linux/amd64 and linux/arm64, the image, SHA256SUMS) with
# scripts/release.sh; `make release VERSION=0.1.0` names the version.
# `make chart-test` renders, lints and checks deploy/helm/tokenkeeper;
# `make manifests` regenerates deploy/kubernetes/tokenkeeper.yaml (and the
# chart's copy of the alert rules) after a change of the chart.

.PHONY: release chart-test manifests

release:
	bash scripts/release.sh $(VERSION)

chart-test:
	cd deploy/helm/test && $(GO) vet ./... && $(GO) test -count=1 ./...

manifests:
	cd deploy/helm/test && $(GO) test -count=1 -run 'TestRenderedManifests|TestRulesCopy' -update .
