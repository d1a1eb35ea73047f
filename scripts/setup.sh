#!/usr/bin/env bash
# Set up a fresh Debian machine (as root, or with sudo): the two services and the project with every extra.
# Idempotent: re-running it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v influxd >/dev/null 2>&1 || need+=(influxdb)
# A Japanese font for the dashboard previews (the environment division reads Japanese; matplotlib has none).
[ -e /usr/share/fonts/opentype/ipaexfont-gothic/ipaexg.ttf ] || need+=(fonts-ipaexfont-gothic)
# Debian's cloud-init validates the first-boot bundles' user-data (`cloud-init schema`, tests/test_bundle.py);
# systemd-analyze checks the units.
command -v cloud-init >/dev/null 2>&1 || need+=(cloud-init)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]} (Debian packages)"
  $SUDO apt-get update -qq
  # policy-rc.d may refuse to start the system services; we never use them (the project runs private instances).
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check -e ".[dev]"
echo "setup: done ($("$PY" --version), $(mosquitto -h 2>/dev/null | head -1 || /usr/sbin/mosquitto -h | head -1))"
