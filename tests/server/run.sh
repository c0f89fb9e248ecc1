#!/usr/bin/env bash
# ctest's entry to the Python black-box tests of `nibble serve`:
#   tests/server/run.sh BINARY_DIR [pytest arguments...]
# Runs pytest from a virtual environment holding openai, prometheus-client and pytest: $NIBBLE_PYVENV,
# else BINARY_DIR/pyvenv, else build/pyvenv (`make test` creates it with scripts/test-venv). Without one, the test is
# reported as skipped (exit 77, ctest's SKIP_RETURN_CODE) with the reason.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source_dir=$(cd "$here/../.." && pwd)
binary_dir=$(cd "$1" && pwd)
shift
venv=""
for candidate in "${NIBBLE_PYVENV:-}" "$binary_dir/pyvenv" "$source_dir/build/pyvenv"; do
  if [ -n "$candidate" ] && [ -x "$candidate/bin/python" ] &&
     "$candidate/bin/python" -c "import openai, prometheus_client, pytest" 2>/dev/null; then
    venv=$candidate
    break
  fi
done
if [ -z "$venv" ]; then
  echo "SKIPPED: no Python venv with openai, prometheus-client and pytest (looked at \$NIBBLE_PYVENV," \
       "$binary_dir/pyvenv, $source_dir/build/pyvenv). Create one: python3 -m venv build/pyvenv &&" \
       "build/pyvenv/bin/pip install -r tests/server/requirements.txt (scripts/test-venv does; make test runs it)."
  exit 77
fi
export NIBBLE_SOURCE_DIR=$source_dir NIBBLE_BINARY_DIR=$binary_dir PYTHONDONTWRITEBYTECODE=1
cd "$here"
exec "$venv/bin/python" -m pytest -q -rs -p no:cacheprovider "$@"
