# Two commands on a fresh machine: `make run` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format bench clean debian-tools lock mutate names

# The exact versions (and hashes) of requirements-dev.lock; `make lock` refreshes both lock files.
$(STAMP): pyproject.toml requirements-dev.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# The units install as remails_functions, remails_smtp_edge and remails_sender_node (pyproject's
# package-dir). mypy and mutmut read source trees and do not run the editable install's import
# hook, so they see those names through links: .names/ for mypy (its mypy_path), .mutate/ as the
# tree mutmut copies and runs in.
UNITS := functions smtp_edge sender_node
names:
	mkdir -p .names .mutate
	for u in $(UNITS); do ln -sfn ../$$u .names/remails_$$u; ln -sfn ../$$u .mutate/remails_$$u; done
	for f in remails bench tests docs README.md pyproject.toml; do ln -sfn ../$$f .mutate/$$f; done

LOCK := $(BIN)/uv pip compile pyproject.toml --python-version 3.11 --python-platform x86_64-manylinux_2_35 \
	--generate-hashes --quiet
lock: $(STAMP)
	$(LOCK) -o requirements.lock
	$(LOCK) --extra dev -o requirements-dev.lock

# checkov lives in a venv of its own: it pins a fork of python-hcl2 under the same module name.
CHECKOV := .venv-checkov/bin/checkov
$(CHECKOV):
	$(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/python -m pip install --quiet --upgrade pip
	.venv-checkov/bin/python -m pip install --quiet 'checkov>=3.2,<4'

# Schemas the Terraform is checked against offline (tests/infra/schemas.py): the Knative and
# cert-manager CRDs as cloudcoil generated them (read as source, never imported, hence the
# foreign Python version) and the kubernetes provider's schema inside its cdktf bindings.
INFRA_SCHEMAS := .infra-schemas/.installed
$(INFRA_SCHEMAS):
	$(BIN)/python -m pip install --quiet --no-deps --only-binary=:all: --python-version 3.14 \
		--target .infra-schemas/python 'cloudcoil-models-knative-serving==1.23.0.1' \
		'cloudcoil-models-knative-eventing==1.23.0.1' 'cloudcoil-models-cert-manager==1.21.1.1'
	npm install --silent --no-audit --no-fund --no-save --prefix .infra-schemas/npm \
		'@cdktf/provider-kubernetes@12.1.1'
	touch $@

# Debian tools the tests drive as real peers (swaks) and load generators (postfix's smtp-source),
# kubectl, whose --help tests/infra/test_deploy_doc.py checks docs/deploy.md against, and
# promtool (Debian's prometheus; its server is stopped), which checks infra/observability's rules,
# and zbarimg (zbar-tools), which reads the two-factor QR code off Chromium's screenshot.
debian-tools:
	@if ! command -v swaks >/dev/null || ! command -v smtp-sink >/dev/null || ! command -v kubectl >/dev/null \
		|| ! command -v chromium >/dev/null || ! command -v promtool >/dev/null || ! command -v zbarimg >/dev/null \
		|| ! perl -MNet::SSLeay -MIO::Socket::SSL -e1 2>/dev/null; then \
		echo "installing swaks and postfix tools"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
			--no-install-recommends swaks libnet-ssleay-perl libio-socket-ssl-perl \
			libauthen-sasl-perl postfix kubectl chromium prometheus zbar-tools >/dev/null; \
		$$SUDO postfix stop >/dev/null 2>&1 || true; \
		$$SUDO service prometheus stop >/dev/null 2>&1 || true; \
	fi

run: $(STAMP)
	$(BIN)/remails up

test: $(STAMP) $(CHECKOV) $(INFRA_SCHEMAS) debian-tools
	$(BIN)/python -m pytest -q

lint: $(STAMP) names
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Mutation testing of the pure decision modules (slow; not part of `make test`).
mutate: $(STAMP) names
	rm -rf .mutate/mutants
	cd .mutate && ../$(BIN)/mutmut run --max-children 2 || true
	cd .mutate && ../$(BIN)/mutmut results --all true | grep -v ': killed$$' || true

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .names .mutate .venv-checkov .infra-schemas .remails .pytest_cache .mypy_cache .ruff_cache
