#!/bin/sh
# Installs graydar from an unpacked `cargo xtask dist` tarball:
#   tar -xzf graydar-<version>-<arch>-linux.tar.gz && sudo ./graydar-<version>-<arch>-linux/install.sh
# Binaries go to /usr/local/bin, systemd units to /usr/local/lib/systemd/system,
# configs to /etc/graydar (an existing one is kept; the new one is written
# next to it as <name>.new), runbooks, rules and the dashboard to
# /usr/local/share. DESTDIR=/some/root installs under another root instead
# (packaging, tests) and then touches nothing outside it.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=${DESTDIR:-}
prefix=/usr/local

say() { printf 'graydar install: %s\n' "$*"; }

install -d -m 0755 "$root$prefix/bin" "$root$prefix/lib/systemd/system" \
    "$root$prefix/share/doc/graydar/runbooks" "$root$prefix/share/graydar/prometheus" \
    "$root$prefix/share/graydar/grafana"
install -d -m 0755 "$root/etc/graydar"

for b in graydar-agent graydar-controller graydar; do
    install -m 0755 "$here/bin/$b" "$root$prefix/bin/$b"
done
for u in "$here"/systemd/*.service; do
    install -m 0644 "$u" "$root$prefix/lib/systemd/system/"
done
for c in agent.toml controller.toml; do
    if [ -e "$root/etc/graydar/$c" ]; then
        install -m 0644 "$here/etc/$c" "$root/etc/graydar/$c.new"
        say "kept /etc/graydar/$c; the shipped one is /etc/graydar/$c.new"
    else
        install -m 0644 "$here/etc/$c" "$root/etc/graydar/$c"
    fi
done
# Controller API tokens (`role:token` per line), root-only; systemd hands the
# controller a private copy (LoadCredential). Generated once, never replaced.
if [ ! -e "$root/etc/graydar/tokens" ]; then
    token() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }
    (
        umask 077
        {
            echo "agent:$(token)"
            echo "viewer:$(token)"
            echo "operator:$(token)"
        } > "$root/etc/graydar/tokens"
    )
    say "wrote new API tokens to /etc/graydar/tokens (root-only)"
fi
# The agent's controller token, root-only; the agent unit loads it as the
# credential controller-token. This host's own controller's agent token by
# default; on agent-only hosts replace it with your controller's. Never replaced.
if [ ! -e "$root/etc/graydar/agent.token" ]; then
    (
        umask 077
        sed -n 's/^agent://p' "$root/etc/graydar/tokens" | tr -d '\n' > "$root/etc/graydar/agent.token"
    )
    say "wrote /etc/graydar/agent.token (root-only) from the agent token in /etc/graydar/tokens"
fi
for f in "$here"/runbooks/*.md; do
    install -m 0644 "$f" "$root$prefix/share/doc/graydar/runbooks/"
done
install -m 0644 "$here/README.md" "$root$prefix/share/doc/graydar/README.md"
for f in "$here"/prometheus/*; do
    install -m 0644 "$f" "$root$prefix/share/graydar/prometheus/"
done
install -m 0644 "$here/grafana/graydar.json" "$root$prefix/share/graydar/grafana/graydar.json"

if [ -z "$root" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
say "installed $("$root$prefix/bin/graydar-agent" --version) into ${root:-/}"
say "start the agent:       systemctl enable --now graydar-agent.service"
say "start the controller:  systemctl enable --now graydar-controller.service"
