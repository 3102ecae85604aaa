# gwproxy: build, run, test. `make run` and `make test` work on a fresh machine.

CARGO ?= cargo
# The built-in default user's secret for `make run`; override with SECRET=...
SECRET ?= $(shell head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
GATEWAY ?= 127.0.0.1:8181

.PHONY: all build release run test lint fmt clean

all: build

build:
	$(CARGO) build --bins

release:
	$(CARGO) build --release --bins

## run: gwproxy on its built-in default (127.0.0.1:3000) with the demo gateway on 127.0.0.1:8181
run: release
	@target/release/demo-gateway $(GATEWAY) & gw=$$!; \
	trap 'kill $$gw 2>/dev/null' EXIT INT TERM; \
	echo; \
	echo "gwproxy on http://127.0.0.1:3000, demo gateway on http://$(GATEWAY). Try:"; \
	echo; \
	echo "  curl -s http://127.0.0.1:3000/api/proxy -H 'Authorization: $(SECRET)' \\"; \
	echo "    -d '{\"method\":\"GET\",\"url\":\"http://$(GATEWAY)/test-oas/get\",\"headers\":{\"test\":\"tyk\"}}'"; \
	echo; \
	GWPROXY_SECRET=$(SECRET) target/release/gwproxy

## test: every test, plus the lints CI holds the code to
test: lint
	$(CARGO) test --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
