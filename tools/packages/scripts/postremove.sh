#!/bin/sh
# strongroom-agent postrm (deb: "remove" | "purge" | "upgrade" ...; rpm: 0 = erase, 1 = upgrade).
set -e
case "$1" in
    remove|purge|0)
        # Anything written beside the package's files after installation.
        rm -rf /opt/strongroom/agent
        rmdir /opt/strongroom 2>/dev/null || true
        if [ -d /run/systemd/system ]; then
            systemctl daemon-reload >/dev/null 2>&1 || true
        fi
        ;;
esac
case "$1" in
    # rpm has no purge: erasing the package removes the credential and caches too (ADR 0045).
    purge|0)
        rm -rf /var/lib/strongroom-agent
        ;;
esac
exit 0
