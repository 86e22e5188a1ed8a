#!/usr/bin/env bash
# Set up rlfm with its test tools, check lint and format, run the test suite.
#   bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
# the labelling app's browser tests drive Debian's chromium, its API tests a PostgreSQL server
# they start themselves; install either where it is missing and apt-get can (as root)
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
if [ "${#missing[@]}" -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "test.sh: installing ${missing[*]} (Debian packages) for the labelling app's tests"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; } \
    || echo "test.sh: could not install ${missing[*]}; those tests will be skipped" >&2
fi
.venv/bin/ruff check
.venv/bin/ruff format --check
status=0
.venv/bin/python -m pytest -n 2 "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
