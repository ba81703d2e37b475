#!/usr/bin/env bash
# The README's test command: installs what the tests drive besides Rust (Debian's Chromium
# and ChromeDriver, for the panel's and the adoption report's real-browser tests) when
# missing, then runs every test. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    echo "== installing chromium and chromium-driver (browser tests)"
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    if ! $sudo apt-get install -y chromium chromium-driver; then
        $sudo apt-get update
        $sudo apt-get install -y chromium chromium-driver
    fi
fi

cargo test "$@"
