#!/bin/sh
# strongroom-agent postinst (deb: "configure" [old-version]; rpm: 1 = install, 2 = upgrade).
# Enables nothing: the install-and-enroll command enables the unit once the agent is enrolled.
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
    # An upgrade restarts a running agent on the new version; a fresh install starts nothing.
    systemctl try-restart strongroom-agent.service >/dev/null 2>&1 || true
fi
exit 0
