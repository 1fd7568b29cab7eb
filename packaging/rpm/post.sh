# vfsdr %post (like %systemd_post): on first install, apply the preset (80-vfsdr.preset enables
# the unit, as the .deb does) and start the agent when systemd runs; the default configuration is
# valid and has no volumes, so the agent starts idle until it is configured and reloaded.
if [ "$1" -eq 1 ] && [ -x /usr/bin/systemctl ]; then
	systemctl --no-reload preset vfsdr.service >/dev/null 2>&1 || :
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload >/dev/null 2>&1 || :
		if systemctl --quiet is-enabled vfsdr.service 2>/dev/null; then
			systemctl start vfsdr.service >/dev/null 2>&1 || :
		fi
	fi
fi
