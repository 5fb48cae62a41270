#!/bin/sh
# Debian's chromium and chromium-driver, for the dashboard's browser test.
# Where apt-get cannot install them, say so and go on: that one test is then skipped.
command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "browser-deps: no apt-get here; the dashboard browser test will be skipped" >&2
  exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo -n"
install() { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; }
install || { $SUDO apt-get update -q >/dev/null 2>&1 && install; } || \
  echo "browser-deps: could not install chromium; the dashboard browser test will be skipped" >&2
exit 0
