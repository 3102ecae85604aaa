# gwproxy: build, run, test. `make run` and `make test` work on a fresh machine.

CARGO ?= cargo
# The built-in default user's secret for `make run`; override with SECRET=...
# Expanded once (:=), so the printed curl line and gwproxy get the same one.
ifeq ($(origin SECRET), undefined)
SECRET := $(shell head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
endif
GATEWAY ?= 127.0.0.1:8181

.PHONY: all build release run run-tls certs test lint fmt clean bench bench-instructions fuzz soak schemathesis

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
	bash tests/schemathesis.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

## bench: gwproxy beside nginx proxy_pass on loopback with wrk (DURATION=12s, ROUNDS=2 by default)
bench:
	bash benches/bench.sh

## bench-instructions: user-space instructions per request beside nginx, by callgrind (repeatable)
bench-instructions:
	bash benches/instructions.sh

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean

## certs: a local development CA and a localhost certificate (ECDSA P-256, 25 years)
CERT_DAYS ?= 9125
certs: certs/server.pem

certs/server.pem:
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days $(CERT_DAYS) \
	  -subj "/CN=gwproxy development CA" -keyout certs/ca.key -out certs/ca.pem \
	  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
	  -keyout certs/server.key -out certs/server.csr
	printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth\n' > certs/server.ext
	openssl x509 -req -in certs/server.csr -CA certs/ca.pem -CAkey certs/ca.key -CAcreateserial \
	  -days $(CERT_DAYS) -extfile certs/server.ext -out certs/server.pem
	rm -f certs/server.csr certs/server.ext certs/ca.srl

## run-tls: like run, but HTTPS on 127.0.0.1:3443 with the development certificate
run-tls: release certs
	@printf '{"listen":"127.0.0.1:3443","tls":{"cert_file":"certs/server.pem","key_file":"certs/server.key"},"users":[{"name":"dev","secret":"%s"}],"gateways":[{"url":"http://$(GATEWAY)"}]}\n' "$(SECRET)" > target/run-tls.json
	@target/release/demo-gateway $(GATEWAY) & gw=$$!; \
	trap 'kill $$gw 2>/dev/null' EXIT INT TERM; \
	echo; \
	echo "gwproxy on https://127.0.0.1:3443 (certs/server.pem, CA certs/ca.pem). Try:"; \
	echo; \
	echo "  curl -s --cacert certs/ca.pem https://localhost:3443/api/proxy -H 'Authorization: $(SECRET)' \\"; \
	echo "    -d '{\"method\":\"GET\",\"url\":\"http://$(GATEWAY)/test-oas/get\"}'"; \
	echo; \
	target/release/gwproxy --config target/run-tls.json

## schemathesis: tests/openapi/gwproxy.yaml against a live debug gwproxy (also run by `make test`)
schemathesis:
	$(CARGO) build --bins
	bash tests/schemathesis.sh

## fuzz: each cargo-fuzz target in tests/fuzz for FUZZ_SECONDS (default 60); not part of `make test`.
## cargo-fuzz needs nightly features: RUSTC_BOOTSTRAP=1 lets the stable toolchain provide them.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= proxy_request gateway_match
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@for target in $(FUZZ_TARGETS); do \
	  echo "fuzz: $$target for $(FUZZ_SECONDS)s"; \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --fuzz-dir tests/fuzz $$target -- \
	    -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 || exit 1; \
	done

## soak: a release gwproxy under good and bad traffic for SOAK_SECONDS (default 600); not in CI
SOAK_SECONDS ?= 600
soak:
	SOAK_SECONDS=$(SOAK_SECONDS) bash benches/soak.sh
