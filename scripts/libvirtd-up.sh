#!/usr/bin/env bash
# Starts libvirtd on this machine (no systemd) so the libvirt driver can run domains of type 'qemu'.
# Idempotent: settings are written once as a marked block, and running daemons are left alone
# unless the settings changed. Needs root and the Debian packages libvirt-daemon-system and
# libvirt-clients (qemu-system-x86 for the domains themselves).
set -euo pipefail

QEMU_CONF=/etc/libvirt/qemu.conf
BEGIN="# BEGIN vse-provider, written by libvirtd-up.sh"
END="# END vse-provider"

for bin in libvirtd virtlogd virsh; do
  command -v "$bin" >/dev/null || { echo "libvirtd-up: $bin not found; install libvirt-daemon-system libvirt-clients" >&2; exit 1; }
done
[ -f "$QEMU_CONF" ] || { echo "libvirtd-up: $QEMU_CONF missing; install libvirt-daemon-system" >&2; exit 1; }

# What the package's maintainer scripts create when systemd runs them.
for g in kvm libvirt libvirt-qemu; do getent group "$g" >/dev/null || groupadd --system "$g"; done
getent passwd libvirt-qemu >/dev/null || useradd --system --gid libvirt-qemu --home-dir /var/lib/libvirt --shell /usr/sbin/nologin libvirt-qemu
mkdir -p /var/log/libvirt/qemu /var/run/libvirt /var/lib/libvirt/qemu

# Root, no relabelling of files and no security driver: there is no SELinux/AppArmor or per-VM user in a container.
block="$BEGIN
user = \"root\"
group = \"root\"
dynamic_ownership = 0
security_driver = \"none\"
$END"
current=$(sed -n "/^$BEGIN\$/,/^$END\$/p" "$QEMU_CONF")
changed=0
if [ "$current" != "$block" ]; then
  tmp=$(mktemp "$QEMU_CONF.XXXXXX")
  sed "/^$BEGIN\$/,/^$END\$/d" "$QEMU_CONF" >"$tmp"
  # The packaged file may end without a newline.
  if [ -s "$tmp" ] && [ -n "$(tail -c1 "$tmp")" ]; then echo >>"$tmp"; fi
  printf '%s\n' "$block" >>"$tmp"
  chmod --reference="$QEMU_CONF" "$tmp"
  mv "$tmp" "$QEMU_CONF"
  changed=1
fi

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

running /var/run/virtlogd.pid || virtlogd -d

if running /var/run/libvirtd.pid && [ "$changed" = 1 ]; then
  # qemu.conf is read at start only.
  pid=$(cat /var/run/libvirtd.pid)
  kill "$pid"
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
fi
running /var/run/libvirtd.pid || libvirtd -d

for _ in $(seq 1 100); do
  if virsh --connect qemu:///system version >/dev/null 2>&1; then
    echo "libvirtd-up: libvirtd answers on qemu:///system"
    exit 0
  fi
  sleep 0.1
done
echo "libvirtd-up: libvirtd did not answer on qemu:///system within 10 s" >&2
exit 1
