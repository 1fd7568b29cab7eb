# vfsdr %preun (like %systemd_preun): on erase (not upgrade), disable and stop the agent.
if [ "$1" -eq 0 ] && [ -x /usr/bin/systemctl ]; then
	systemctl --no-reload disable --now vfsdr.service >/dev/null 2>&1 || :
fi
