#!/usr/bin/env bash
# System packages the pipelines need: Chromium (HTML rendering) and fonts (SynthDoG, HTML).
# As root they are installed with apt-get; otherwise this prints what to install.
set -euo pipefail
packages=(chromium fonts-dejavu-core fonts-noto-cjk fonts-wqy-microhei)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "Please install these Debian packages (as root): apt-get install ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
