#!/bin/sh
# strongroom-agent prerm (deb: "remove" | "upgrade" ...; rpm: 0 = erase, 1 = upgrade).
set -e
case "$1" in
    remove|0)
        if command -v systemctl >/dev/null 2>&1; then
            if [ -d /run/systemd/system ]; then
                systemctl stop strongroom-agent.service >/dev/null 2>&1 || true
            fi
            # Works without a running systemd too: removes the multi-user.target.wants link.
            systemctl disable strongroom-agent.service >/dev/null 2>&1 || true
        fi
        ;;
esac
exit 0
