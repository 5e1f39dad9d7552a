# Sourced by scripts/test: the browser tests drive Debian's Chromium through Playwright,
# so install the package when it is missing (root, or sudo without a password). An
# operator who cannot install packages sets EGEN_BROWSER=/path/to/chromium instead.
if [ -z "${EGEN_BROWSER:-}" ] && ! command -v chromium >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser tests" >&2
    if [ "$(id -u)" = 0 ]; then
        as_root=()
    elif command -v sudo >/dev/null 2>&1; then
        as_root=(sudo -n)
    else
        echo "chromium is missing and this user cannot install it: install the chromium" \
            "package or set EGEN_BROWSER=/path/to/chromium" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${as_root[@]}" apt-get update -qq >&2
    "${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium >&2
fi
