#!/usr/bin/env bash
# Install WordNet 3.0's database files (Debian's wordnet-base: /usr/share/wordnet) when missing, for
# train.augment's synonym method and its tests; DSM5LAB_REQUIRE_WORDNET makes those tests fail instead of skip
# without them. Sourced by .ci/run.
set -euo pipefail
if [ ! -f /usr/share/wordnet/index.noun ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wordnet-base >/dev/null
fi
export DSM5LAB_REQUIRE_WORDNET=1
