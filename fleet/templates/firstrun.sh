#!/bin/bash
# firstrun.sh for @GATEWAY_ID@ (`cityos fleet bundle --image raspios-bookworm`), run once by systemd at the first
# boot (the systemd.run= entry in cmdline.txt, the way Raspberry Pi Imager does it on Bookworm). It creates the
# users, writes the gateway's files, installs and enables the agent (cityos-firstboot --enable-only), then removes
# itself and its cmdline.txt entry; the Pi reboots and the agent starts.
# It holds the gateway's private key: keep the card safe until its first boot.
set -u
umask 077
BOOT=@BOOT@
LOG=/var/log/cityos-firstrun.log

cityos_file() {  # PATH MODE OWNER GROUP; the content on standard input
    install -d -m 0755 "$(dirname "$1")" && install -m "$2" -o "$3" -g "$4" /dev/stdin "$1"
}

main() {
    exec >>"$LOG" 2>&1
    echo "firstrun.sh: @GATEWAY_ID@, bundle @INSTANCE_ID@, $(date -u +%Y-%m-%dT%H:%M:%SZ)"

    # --- the name
    echo @HOSTNAME@ >/etc/hostname
    if grep -q '^127\.0\.1\.1' /etc/hosts; then
        sed -i 's/^127\.0\.1\.1.*/127.0.1.1\t@HOSTNAME@/' /etc/hosts
    else
        printf '127.0.1.1\t%s\n' @HOSTNAME@ >>/etc/hosts
    fi
    ln -sf /usr/share/zoneinfo/@TIMEZONE@ /etc/localtime && echo @TIMEZONE@ >/etc/timezone

    # --- the users
@USERS@

    # --- the files
@FILES@

    # --- the network
@NETWORK@

    # --- the agent
    @FIRSTBOOT@ --enable-only
}

# main runs in a subshell with errexit: its first failure ends it, and the clean-up below runs anyway.
( set -e; main ); rc=$?
# One compound command, read whole before it runs: it shreds this very file. Always exit 0, so that systemd
# reboots (a failure is in cityos/FIRSTBOOT-RESULT.txt and in /var/log on the gateway).
{
    if [ "$rc" -ne 0 ] && [ ! -f "$BOOT/cityos/FIRSTBOOT-RESULT.txt" ]; then
        { echo "FAILED (exit $rc) in firstrun.sh for @GATEWAY_ID@, before the agent was installed."; tail -n 40 "$LOG"; } \
            >"$BOOT/cityos/FIRSTBOOT-RESULT.txt" 2>/dev/null || true
    fi
    sed -i 's|@CMDLINE_RE@||' "$BOOT/cmdline.txt"
    shred -u "$BOOT/firstrun.sh" 2>/dev/null || rm -f "$BOOT/firstrun.sh"
    echo "firstrun.sh: finished (exit $rc), rebooting" >>"$LOG"
    exit 0
}
