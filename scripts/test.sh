#!/usr/bin/env bash
# Sets up lm with its test dependencies and runs the whole test suite (README's second command; CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
./install.sh --test --no-models

# The pull/push tests run a real OCI registry (Debian's docker-registry) and sign registry tokens with
# openssl; the page's tests (test_webui.py) drive Debian's headless chromium through its chromedriver;
# the fleet tests put daemons behind a real nginx. Install what is missing where apt-get can (as root,
# or through password-less sudo).
missing=()
command -v docker-registry >/dev/null 2>&1 || command -v registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ "${#missing[@]}" -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  sudo=()
  if [ "$(id -u)" != 0 ]; then sudo=(sudo -n); fi
  if [ "${#sudo[@]}" = 0 ] || sudo -n true 2>/dev/null; then
    echo ">>> installing ${missing[*]} for the registry, browser and fleet tests"
    if "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
       || { "${sudo[@]}" apt-get update -qq >/dev/null \
            && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; then
      # The packages start system-wide services (a registry on :5000, nginx on :80) where services run;
      # the tests start their own.
      if command -v systemctl >/dev/null 2>&1; then
        for unit in docker-registry nginx; do "${sudo[@]}" systemctl disable --now "$unit" >/dev/null 2>&1 || true; done
      fi
    else
      echo ">>> could not install ${missing[*]}: the registry, browser or fleet tests will be skipped" >&2
    fi
  else
    echo ">>> ${missing[*]} missing and no root to install it: the registry, browser or fleet tests will be skipped" >&2
  fi
fi
exec .venv/bin/python -m pytest -q "$@"
