# vfsdr %postun (like %systemd_postun_with_restart): on upgrade, restart a running agent on the
# new binary; on erase, remove the runtime directory and the configuration directory when empty
# (a modified vfsdr.yaml is kept as vfsdr.yaml.rpmsave). The state store in /var/lib/vfsdr is left
# in place on erase, as RPM packages do with data; volume images under /srv/vfsdr are never touched.
if [ -d /run/systemd/system ] && [ -x /usr/bin/systemctl ]; then
	systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -ge 1 ]; then
	if [ -d /run/systemd/system ] && [ -x /usr/bin/systemctl ]; then
		systemctl try-restart vfsdr.service >/dev/null 2>&1 || :
	fi
else
	rm -rf /run/vfsdr
	rmdir /etc/vfsdr 2>/dev/null || :
fi
