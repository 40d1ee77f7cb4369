#!/bin/sh
# strongroom-agent postrm (deb: "remove" | "purge" | "upgrade" ...; rpm: 0 = erase, 1 = upgrade).
set -e
case "$1" in
    remove|purge|0)
        # Anything written beside the package's files after installation.
        rm -rf /opt/strongroom/agent
        rmdir /opt/strongroom 2>/dev/null || true
        # The .deb lists /opt as a parent directory (nfpm adds it); no Debian package owns it, so
        # dpkg removes it with the package's last file. It is an FHS directory: put it back.
        [ -d /opt ] || install -d -m 0755 /opt
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
