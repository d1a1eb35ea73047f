#!/bin/sh
# Adds the first-boot entry (cmdline.txt.append) to cmdline.txt on a Raspberry Pi OS Bookworm boot partition,
# once, keeping it one line (the kernel reads only the first). Linux or macOS:
#   sh cityos/patch-cmdline.sh /media/$USER/bootfs        (macOS: sh cityos/patch-cmdline.sh /Volumes/bootfs)
# firstrun.sh takes the entry out again at the first boot.
set -eu
boot=${1:?"usage: sh patch-cmdline.sh BOOT-PARTITION (the folder that holds cmdline.txt)"}
here=$(cd "$(dirname "$0")" && pwd)
f="$boot/cmdline.txt"
[ -f "$f" ] || { echo "no cmdline.txt in $boot: is that the boot partition (bootfs)?" >&2; exit 1; }
[ -f "$boot/firstrun.sh" ] || { echo "no firstrun.sh in $boot: copy the bundle onto it first" >&2; exit 1; }
add=$(tr -d '\r\n' <"$here/../cmdline.txt.append")
[ "$(wc -l <"$f" | tr -d ' ')" -le 1 ] || { echo "$f has more than one line: fix it by hand first (one line only)" >&2; exit 1; }
line=$(head -n 1 "$f" | tr -d '\r\n')
case "$line" in *root=*) ;; *) echo "$f is not a Raspberry Pi kernel command line (no root=): left as it is" >&2; exit 1 ;; esac
case "$line" in *systemd.run=*) echo "$f already has a systemd.run= entry: left as it is"; exit 0 ;; esac
printf '%s %s\n' "$line" "$add" >"$f.cityos-tmp"
mv "$f.cityos-tmp" "$f"
echo "added the first-boot entry to $f"
