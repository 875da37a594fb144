#!/usr/bin/env bash
# Install headless Chromium from Debian packages when missing, for the tests that open the offline plots page
# in a real browser (tests/browser.py); DSM5LAB_REQUIRE_CHROMIUM makes them fail instead of skip without it.
# Sourced by .ci/run.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
export DSM5LAB_REQUIRE_CHROMIUM=1
