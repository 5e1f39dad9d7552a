# Sourced by scripts/run and scripts/test: make sure .venv exists and holds what
# setup.cfg asks for. Reinstalls only when the packaging files changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"

pick_python() {
    for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "egen needs Python 3.11 or newer on PATH (or set PYTHON=/path/to/python3)" >&2
    return 1
}

if [ ! -x "$venv/bin/python" ]; then
    py="$(pick_python)"
    echo "creating $venv with $py" >&2
    "$py" -m venv "$venv"
fi

stamp="$venv/.egen-installed"
want="$(cat "$root/setup.cfg" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing egen and its dependencies into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
    "$venv/bin/python" -m pip install --quiet -e "$root[embedded,test]" >&2
    echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
cd "$root"
