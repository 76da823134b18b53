#!/usr/bin/env bash
# Installs the Python test dependencies into the project venv (.venv) and the reference
# libraries the parity tests compare against:
#   attnhut 0.4.0   -> .venv site-packages (import attnhut)
#   attnhut 0.5.0   -> .venv/refs/attnhut-0.5.0 (loaded under another module name by the tests)
#   attzoo 0.1.0    -> .venv site-packages (import attzoo); it declares Requires-Python >= 3.12,
#                      the venv is 3.11, so it is installed with --ignore-requires-python and
#                      checked to import.
# The references are installed with --no-deps: their torch requirement must never replace the
# pinned torch of requirements.txt. Idempotent: a stamp in .venv records what was installed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py=".venv/bin/python"
pip=(".venv/bin/python" -m pip install -q --disable-pip-version-check)
[ -x "$py" ] || { echo "install-test-deps: $py missing (create the venv first)" >&2; exit 1; }

attnhut_old=0.4.0
attnhut_new=0.5.0
attzoo_version=0.1.0
stamp=".venv/.test-deps-stamp"
want="$(cat requirements-test.txt) attnhut=$attnhut_old attnhut-target=$attnhut_new attzoo=$attzoo_version"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "install-test-deps: up to date"
  exit 0
fi

torch_before="$("$py" -c 'import torch; print(torch.__version__)')"

"${pip[@]}" -r requirements-test.txt
"${pip[@]}" --no-deps "attnhut==$attnhut_old"

target=".venv/refs/attnhut-$attnhut_new"
rm -rf "$target"
"${pip[@]}" --no-deps --target "$target" "attnhut==$attnhut_new"

"${pip[@]}" --no-deps --ignore-requires-python "attzoo==$attzoo_version"

torch_after="$("$py" -c 'import torch; print(torch.__version__)')"
if [ "$torch_before" != "$torch_after" ]; then
  echo "install-test-deps: torch changed ($torch_before -> $torch_after)" >&2
  exit 1
fi

# Every reference must import on the venv's Python.
"$py" - "$target" <<'PY'
import importlib.util, sys
import attnhut, attzoo
print("install-test-deps: attnhut", getattr(attnhut, "__version__", "?"), "attzoo", getattr(attzoo, "__version__", "?"))
spec = importlib.util.spec_from_file_location(
    "attnhut_v050", f"{sys.argv[1]}/attnhut/__init__.py",
    submodule_search_locations=[f"{sys.argv[1]}/attnhut"])
mod = importlib.util.module_from_spec(spec)
sys.modules["attnhut_v050"] = mod
spec.loader.exec_module(mod)
print("install-test-deps: attnhut 0.5.0 target imports")
PY

echo "$want" > "$stamp"
echo "install-test-deps: done"
