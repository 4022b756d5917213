#!/usr/bin/env bash
# Installs the Debian packages the local stack and the tests need, only if missing.
# Idempotent; called by `make setup` (and so by `make run` and `make test`).
set -euo pipefail

packages=(redis-server influxdb chromium chromium-driver)
# The JDK: the Flink job's JVM fast lane (flink/java) is compiled at setup.
command -v javac >/dev/null 2>&1 || packages+=(openjdk-17-jdk-headless)
command -v curl >/dev/null 2>&1 || packages+=(curl)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# policy-rc.d 101: the packages' own services must not start; aircast runs its own
# redis-server and influxd on free ports with their own config.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
