# Two commands on a fresh machine: `make demo` and `make test`. Each installs what it needs itself.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.ptt-installed
PPO_VENV := .venv-ppo
COLAB_VENV := .venv-colab
JS_BUNDLE := ptt_nb/static/widget.js
HEADLESS ?=
PYTEST_ARGS ?=

.PHONY: demo test install js lint chromium ppo-env colab-env clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# the CPU build of torch lies on this machine's disk; installing it first keeps pip from fetching a CUDA build
	$(PIP) install -q torch==2.13.0
	# hatchling's build hook (hatch-jupyter-builder) builds $(JS_BUNDLE) here when it is missing (needs node);
	# the $(JS_BUNDLE) rule below rebuilds it when js/ sources change
	$(PIP) install -q -c constraints.txt -e '.[notebook,report,trl,test]'
	touch $(STAMP)

install: $(STAMP) $(JS_BUNDLE)

JS_DEPS := js/node_modules/.package-lock.json

$(JS_DEPS): js/package.json js/package-lock.json
	cd js && npm ci --no-audit --no-fund

# the bundle is committed (a clone installs with no node); rebuilt here after edits in js/src or the palette
$(JS_BUNDLE): $(wildcard js/src/*.js) js/package.json ptt_nb/palette.json | $(JS_DEPS)
	cd js && npm run build

js: $(JS_BUNDLE)

chromium:
	@test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

ppo-env:
	bash tests/ppo/make_env.sh $(PPO_VENV)

# Colab's kernel side (IPython 7.34, ipykernel 6.17, ipywidgets 7.7.1, anywidget 0.9.21): tests/colab, browser tests
colab-env:
	bash tests/colab/make_env.sh $(COLAB_VENV)

lint: $(STAMP)
	$(VENV)/bin/ruff check ptt_nb tests benchmarks

demo: install
ifeq ($(HEADLESS),)
	$(VENV)/bin/jupyter lab notebooks/quickstart.ipynb
else
	$(VENV)/bin/ptt-nb demo
endif

test: install $(JS_DEPS) chromium ppo-env colab-env lint
	cd js && npm test
	PTT_PPO_PYTHON=$(CURDIR)/$(PPO_VENV)/bin/python PTT_COLAB_VENV=$(CURDIR)/$(COLAB_VENV) \
		$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(PPO_VENV) $(COLAB_VENV) js/node_modules $(JS_BUNDLE) test-artifacts
