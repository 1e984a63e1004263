#!/usr/bin/env bash
# Installs what the project needs, idempotently: Debian packages, npm
# packages, the Pulumi engine (built from Go modules, cached outside the
# clone), then compiles the TypeScript. Safe to run again and again.
set -euo pipefail
cd "$(dirname "$0")/.."

PULUMI_VERSION=v3.259.0
CACHE_DIR="${VSE_CACHE_DIR:-$HOME/.cache/vse-provider}"
log() { printf '[setup] %s\n' "$*" >&2; }
elapsed() { local s=$(($(date +%s) - $1)); printf '%dm%02ds' $((s / 60)) $((s % 60)); }
# Runs "$@" in the foreground (Ctrl-C reaches it), printing "[setup] <what>… <elapsed>"
# every 30 s until it ends, then how long it took; returns its exit status.
with_progress() {
  local what=$1 start ticker status=0
  shift
  start=$(date +%s)
  (
    trap 'kill $nap 2>/dev/null; exit 0' TERM
    while kill -0 $$ 2>/dev/null; do
      sleep 30 &
      nap=$!
      wait $nap
      log "$what… $(elapsed "$start")"
    done
  ) &
  ticker=$!
  "$@" || status=$?
  kill "$ticker" 2>/dev/null || true
  wait "$ticker" 2>/dev/null || true
  if [ "$status" -eq 0 ]; then log "$what: done in $(elapsed "$start")"; else log "$what: failed after $(elapsed "$start")"; fi
  return "$status"
}

# --- Debian packages ----------------------------------------------------------
need_debs=()
command -v qemu-system-x86_64 >/dev/null || need_debs+=(qemu-system-x86)
ls /boot/vmlinuz-* >/dev/null 2>&1 || need_debs+=(linux-image-amd64)
# busybox-static: the guest's init needs a static busybox; the dynamic one won't run in an initramfs.
if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then need_debs+=(busybox-static); fi
command -v go >/dev/null || need_debs+=(golang-go)
# libvirt: the libvirt driver and its tests (libvirtd itself is started by scripts/libvirtd-up.sh when needed).
command -v libvirtd >/dev/null || need_debs+=(libvirt-daemon-system)
command -v virsh >/dev/null || need_debs+=(libvirt-clients)
command -v xmllint >/dev/null || need_debs+=(libxml2-utils)
# Debian VSE images (Environment base: debian) and listing initramfs archives in tests.
command -v mmdebstrap >/dev/null || need_debs+=(mmdebstrap)
command -v cpio >/dev/null || need_debs+=(cpio)
# Namespace hosts (ip netns, veth, bridge, tc) and the per-cluster CA of agents beyond one machine.
command -v ip >/dev/null || need_debs+=(iproute2)
command -v tc >/dev/null || need_debs+=(iproute2)
command -v openssl >/dev/null || need_debs+=(openssl)
# The slurm allocation manager and its tests: a real Slurm (scripts/slurm-up.sh starts it).
command -v slurmctld >/dev/null || need_debs+=(slurm-wlm)
command -v munged >/dev/null || need_debs+=(munge)
# The ssh allocation manager's tests: a real sshd in namespace hosts (tests/support/sshd.ts), and ssh itself.
[ -x /usr/sbin/sshd ] || need_debs+=(openssh-server)
command -v ssh >/dev/null || need_debs+=(openssh-client)
# The gridengine allocation manager's tests: a real Grid Engine (tests/support/gridengine.ts starts it).
[ -x /usr/sbin/sge_qmaster ] || need_debs+=(gridengine-master)
[ -x /usr/sbin/sge_execd ] || need_debs+=(gridengine-exec)
command -v qconf >/dev/null || need_debs+=(gridengine-client)
# The seed-003 benchmark's plot: matplotlib from PyPI in a venv under ~/.cache/vse-provider (provider/bench/seed003.ts).
python3 -c 'import ensurepip, venv' 2>/dev/null || need_debs+=(python3-venv)
if [ "${#need_debs[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing Debian packages: ${need_debs[*]}; run: sudo apt-get install -y ${need_debs[*]}"
    exit 1
  fi
  log "installing Debian packages: ${need_debs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_debs[@]}" >/dev/null
fi

# --- npm packages -------------------------------------------------------------
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "installing npm packages (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
fi

# --- the Pulumi engine --------------------------------------------------------
# Keyed by the engine version and our wrapper module's sources, so a change to
# either builds afresh and anything else reuses the cache.
engine_key=$(cat engine/go.mod engine/go.sum engine/tools.go engine/cmd/pulumi-language-nodejs/main.go | sha256sum | cut -c1-12)
engine_bin="$CACHE_DIR/pulumi-engine/$PULUMI_VERSION-$engine_key/bin"
if [ ! -x "$engine_bin/pulumi" ] || [ ! -x "$engine_bin/pulumi-language-nodejs" ]; then
  log "building the Pulumi engine $PULUMI_VERSION from Go modules (first time only, several minutes; a line every 30 s)"
  tmp=$(mktemp -d "$CACHE_DIR.build.XXXXXX" 2>/dev/null || { mkdir -p "$(dirname "$CACHE_DIR")"; mktemp -d "$CACHE_DIR.build.XXXXXX"; })
  ldflags="-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$PULUMI_VERSION"
  with_progress "building the Pulumi engine" \
    env -C engine GOFLAGS=-mod=mod GOBIN="$tmp" go install -ldflags "$ldflags" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi ./cmd/pulumi-language-nodejs
  mkdir -p "$(dirname "$engine_bin")"
  rm -rf "$engine_bin"
  mv "$tmp" "$engine_bin"
fi
# The dynamic-provider plugin is one the engine treats as bundled: it looks for
# it next to the pulumi binary, and warns "using pulumi-resource-pulumi-nodejs
# from $PATH" when it finds it anywhere else first. So it goes next to pulumi
# (the SDK's own script, which runs the program's @pulumi/pulumi/cmd/dynamic-provider).
plugin=pulumi-resource-pulumi-nodejs
if ! cmp -s "node_modules/@pulumi/pulumi/$plugin" "$engine_bin/$plugin"; then
  cp "node_modules/@pulumi/pulumi/$plugin" "$engine_bin/.$plugin.$$"
  chmod 0755 "$engine_bin/.$plugin.$$"
  mv -f "$engine_bin/.$plugin.$$" "$engine_bin/$plugin"
fi
# The TypeScript side (provider/cli/engine.ts) reads this to find the engine.
printf '%s\n' "$engine_bin" > .engine-bin

# --- examples/typescript ------------------------------------------------------
# Its dependency "vse-provider": "file:../.." is this clone; link it as
# `npm install` there would, and let the rest (@pulumi/pulumi, ts-node,
# typescript) resolve from the clone's node_modules.
if [ ! -e examples/typescript/node_modules/vse-provider ]; then
  mkdir -p examples/typescript/node_modules
  ln -sfn ../../.. examples/typescript/node_modules/vse-provider
fi

# --- compile ------------------------------------------------------------------
if [ "${VSE_SKIP_BUILD:-0}" != 1 ]; then
  npx tsc -p tsconfig.json
fi

# --- Slurm --------------------------------------------------------------------
# The test cluster of the slurm allocation manager (munged, slurmctld, a slurmd
# per namespace host): idempotent, about a second when it already runs. As root
# always (npm test runs its tests against the real daemons); VSE_SLURM=0 skips it.
if [ "${VSE_SLURM:-1}" != 0 ] && [ "$(id -u)" -eq 0 ] && [ -f dist/provider/allocation/netns.js ]; then
  scripts/slurm-up.sh
fi
