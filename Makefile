# The README's two commands are `make run` and `make test`; both install what they need first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# PostgreSQL for the second pass of the suite; pytest-django creates and drops test_<name>.
PG_URL ?= postgres://postgres@127.0.0.1:5432/checktick
# Schema-aware validation of ops/k8s/ in tests/ops (bundles the Kubernetes schemas; works offline).
KUBERNETES_VALIDATE := kubernetes-validate==1.37.0

# Quick-start defaults for `make run-once` (production sets these in the environment;
# `make run` sets the same defaults itself, in tooling/devstack.py).
QUICKSTART_ENV = DEBUG=$${DEBUG:-true} SITE_URL=$${SITE_URL:-http://localhost:8000} \
	DEFAULT_FROM_EMAIL=$${DEFAULT_FROM_EMAIL:-governance@localhost} \
	EMAIL_BACKEND=$${EMAIL_BACKEND:-django.core.mail.backends.filebased.EmailBackend}

.PHONY: install run run-once test test-sqlite test-postgres test-deps system-deps bench clean trials

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

# The whole service until Ctrl-C: embedded Redis, migrations, demo data, admin user, web, worker,
# beat, Flower, and one run of each job at start-up (tooling/devstack.py).
run: install
	$(PY) -m tooling.devstack

# Today's cron-like behaviour: migrate, demo data if empty, both jobs once, exit.
run-once: install
	mkdir -p $${CHECKTICK_VAR_DIR:-var}
	$(QUICKSTART_ENV) $(PY) manage.py migrate --no-input -v 0
	$(QUICKSTART_ENV) $(PY) manage.py load_demo_data --if-empty
	$(QUICKSTART_ENV) $(PY) manage.py process_data_governance
	$(QUICKSTART_ENV) $(PY) manage.py cleanup_survey_progress
	@echo "Warning emails were written to var/sent-emails/ (set EMAIL_HOST and unset EMAIL_BACKEND for SMTP)."

test: install system-deps test-deps test-sqlite test-postgres

# What the browser tests (Chromium), the compose tests (docker-compose's parser) and the systemd
# unit tests (systemd-analyze) need, from Debian, only when missing. As root on Debian, as CI runs;
# otherwise install them yourself.
system-deps:
	@missing=""; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	command -v sqlite3 >/dev/null 2>&1 || missing="$$missing sqlite3"; \
	command -v pg_dump >/dev/null 2>&1 || missing="$$missing postgresql-client"; \
	command -v docker-compose >/dev/null 2>&1 || missing="$$missing docker-compose"; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	if [ -n "$$missing" ]; then \
		echo "installing from Debian:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# Test-only Python tools that are not in pyproject's extras (kept here so a fresh venv gets them).
test-deps: install
	@$(PY) -c "import kubernetes_validate" 2>/dev/null || $(PY) -m pip install -q "$(KUBERNETES_VALIDATE)"

# These suites start their own processes and databases (trials, compose/k8s/systemd, make run, bench
# on PostgreSQL), so the engine of pytest's database does not change what they show: they run once,
# in the PostgreSQL pass. Everything else (domain rules, Celery, admin, health) runs on both.
ENGINE_INDEPENDENT := tests/ops tests/reliability tests/bench

test-sqlite: install
	env -u DATABASE_URL $(PY) -m pytest $(addprefix --ignore=,$(ENGINE_INDEPENDENT)) $(PYTEST_ARGS)

test-postgres: install
	DATABASE_URL=$(PG_URL) $(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf var/checktick.sqlite3 var/checktick.sqlite3-wal var/checktick.sqlite3-shm var/sent-emails var/redis \
		var/quickstart.env var/flower-password

# Reliability trials (tests/reliability): real worker/beat/Redis/SMTP processes, one fault each,
# TRIAL_REPS repetitions (default 20); prints trial, repetitions, runs with every invariant held.
trials: install
	$(PY) -m tests.reliability.run_trials --reps $${TRIAL_REPS:-20}

# Speed and memory figures of both jobs on PostgreSQL (DATABASE_URL, default checktick_bench):
# writes bench/results/latest.{json,md} and prints the tables (about 45 minutes on 2 CPUs; --quick under 2 minutes).
bench: install
	$(PY) -m bench.run
