# Two commands a new user needs:  make run   and   make test
# Works on a machine with only python3, make and apt: uv comes from PyPI into .tools/,
# Python packages from uv.lock into .venv/, Debian packages via apt-get when missing.

UV := .tools/bin/uv
PY_DEPS := .venv/.synced
NODE_DEPS := tests/node/node_modules/.installed

.PHONY: run test lint jstest pytest system-deps clean

run: $(PY_DEPS)
	$(UV) run --frozen tokenrelay serve

test: $(PY_DEPS) system-deps $(NODE_DEPS) lint jstest pytest

lint: $(PY_DEPS)
	$(UV) run --frozen ruff check tokenrelay tests
	$(UV) run --frozen ruff format --check tokenrelay tests
	$(UV) run --frozen mypy tokenrelay

# The JS client's unit tests: node's own test runner, no npm packages.
jstest: system-deps
	node --test tests/js/

pytest: $(PY_DEPS)
	$(UV) run --frozen pytest -q

$(UV):
	python3 -m venv .tools
	.tools/bin/pip install --quiet uv==0.13.9

$(PY_DEPS): $(UV) uv.lock pyproject.toml
	$(UV) sync --frozen --quiet
	touch $@

# npm packages the tests run for real (Claude's TypeScript SDK, React), from the lock file.
$(NODE_DEPS): tests/node/package-lock.json | system-deps
	npm ci --prefix tests/node --no-audit --no-fund --silent
	touch $@

# Debian packages the test suite runs for real; installed only when missing.
SYSTEM_PACKAGES := redis-server redis-tools nginx nodejs chromium postgresql prometheus
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

clean:
	rm -rf .venv .tools .pytest_cache .mypy_cache .ruff_cache tests/node/node_modules
