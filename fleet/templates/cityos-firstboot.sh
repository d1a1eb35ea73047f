#!/bin/bash
# cityos-firstboot: the gateway's first-boot steps, the same for both images. cloud-init's runcmd runs it with
# --start (Trixie: systemd is up, the agent starts once the clock is synchronised); firstrun.sh runs it with
# --enable-only (Bookworm: a reboot follows and the agent starts then). Written by `cityos fleet bundle` for
# @GATEWAY_ID@. Running it again rebuilds the agent's venv from the wheelhouse on the boot partition.
# Its output goes to the console (cloud-init-output.log) and to @LOG@; the outcome to
# @RESULT@, which the technician can read from the card on any computer.
set -euo pipefail
mode=${1:---start}
case "$mode" in --start|--enable-only) ;; *) echo "usage: $0 [--start|--enable-only]" >&2; exit 2 ;; esac
exec > >(tee -a @LOG@) 2>&1

finish() {
    rc=$?
    {
        if [ "$rc" -eq 0 ]; then
            echo "OK: @GATEWAY_ID@ is installed and its config checked; the agent runs (Bookworm: after the reboot)."
        else
            echo "FAILED (exit $rc): @GATEWAY_ID@. See the lines below, and @LOG@ on the gateway."
        fi
        echo "cityos-firstboot $mode, bundle @INSTANCE_ID@, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "--- the last lines of @LOG@"
        tail -n 40 @LOG@ || true
    } >@RESULT@.tmp 2>/dev/null && mv @RESULT@.tmp @RESULT@ || true
}
trap finish EXIT
say() { echo "cityos-firstboot: $*"; }
fail() { say "$*"; exit 1; }

say "@GATEWAY_ID@ (@FAMILY@), $mode, bundle @INSTANCE_ID@"
[ "$(uname -m)" = @ARCH@ ] || fail "this bundle's wheels are for @ARCH@, this gateway is $(uname -m): build it with --arch $(uname -m)"
py=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$py" = @PYTHON@ ] || fail "this bundle's wheels are for Python @PYTHON@, the image has $py: build it with --python $py"
id -u @USER@ >/dev/null || fail "there is no user @USER@ (the first-boot config creates it)"

say "owners and modes of the gateway's files"
@PERMISSIONS@
install -d -m 0750 -o @USER@ -g @USER@ /var/lib/cityos

say "installing the agent into @VENV@ from @WHEELHOUSE@ (no network needed)"
systemctl stop cityos-gateway.service 2>/dev/null || true
python3 -m venv --clear --without-pip @VENV@
PIP_CONFIG_FILE=/dev/null @INSTALL@
say "compiling the agent's bytecode for its unit (-OO) into @PYCACHE@"
PYTHONPYCACHEPREFIX=@PYCACHE@ @COMPILE@ || say "some files did not compile: the agent compiles those at each start"
# `sudo cityos gateway check --live`: sudo's PATH does not have the venv, /usr/local/bin it has.
ln -sf @VENV@/bin/cityos /usr/local/bin/cityos

say "udev rules and systemd units"
{ udevadm control --reload-rules && udevadm trigger --subsystem-match=tty --action=add; } 2>/dev/null || true
systemctl daemon-reload
systemctl enable systemd-time-wait-sync.service cityos-gateway.service
@ENABLE_EXTRAS@

checked=0
say "checking the config as the service user @USER@"
if runuser -u @USER@ -- @VENV@/bin/cityos gateway check --config @CONFIG@; then
    checked=1
else
    say "the config check failed: the agent is enabled anyway (systemd retries it); fix what the check says"
fi

if [ "$mode" = --start ]; then
    @START_EXTRAS@
    say "waiting up to @CLOCK_WAIT_S@ s for the clock to be synchronised (NTP)"
    for _ in $(seq @CLOCK_WAIT_S@); do
        [ "$(timedatectl show -p NTPSynchronized --value 2>/dev/null)" = yes ] && break
        sleep 1
    done
    say "clock synchronised: $(timedatectl show -p NTPSynchronized --value 2>/dev/null || echo unknown)"
    systemctl start --no-block cityos-gateway.service
    say "cityos-gateway.service started"
fi
[ "$checked" = 1 ] || exit 1
say "done"
