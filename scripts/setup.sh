#!/usr/bin/env bash
# Installs everything agentcg and its tests need on a Debian 12 or 13 machine:
# apt packages, the venv, and the pinned 7.3 test kernel. Idempotent: a second
# run only checks stamps and exits in about a second.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${AGENTCG_CACHE:-$ROOT/.cache}
VENV=${AGENTCG_VENV:-$ROOT/.venv}
# shellcheck source=scripts/kernel.env
. "$ROOT/scripts/kernel.env"

log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (apt and the test kernel need it): sudo $0"
. /etc/os-release
CODENAME=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
case "$CODENAME" in
  bookworm|trixie) ;;
  *) die "unsupported distribution '$CODENAME': agentcg's setup knows Debian 12 (bookworm) and 13 (trixie)";;
esac

# The Debian mirror this machine already uses; never hard-coded in the repo.
debian_mirror() {
  /usr/bin/python3 - "$CODENAME" <<'PY'
import glob, re, sys
code = sys.argv[1]
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in re.split(r"\n\s*\n", open(path).read()):
        fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
        if code in fields.get("Suites", "").split() and "deb" in fields.get("Types", ""):
            print(fields["URIs"].split()[0]); sys.exit(0)
for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
    try:
        lines = open(path).read().splitlines()
    except OSError:
        continue
    for line in lines:
        m = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
        if m and m.group(2) == code:
            print(m.group(1)); sys.exit(0)
sys.exit(1)
PY
}

# A private apt configuration so the system's sources and lists stay untouched.
private_apt() {  # $1 = name, rest = "suite" entries
  local name=$1; shift
  local dir=$CACHE/apt/$name mirror
  mirror=$(debian_mirror) || die "cannot find the Debian mirror for '$CODENAME' in /etc/apt/sources.list*"
  mkdir -p "$dir/lists/partial"
  : >"$dir/sources.list"
  for suite in "$@"; do
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" >>"$dir/sources.list"
  done
  APT_OPTS=(-q -o "Dir::Etc::sourcelist=$dir/sources.list" -o Dir::Etc::sourceparts=/nonexistent
            -o "Dir::State::Lists=$dir/lists" -o APT::Get::List-Cleanup=0)
  apt-get "${APT_OPTS[@]}" update >/dev/null
}

installed() { dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q '^install ok installed'; }
version_at_least() { dpkg --compare-versions "$(dpkg-query -W -f='${Version}' "$1" 2>/dev/null)" ge "$2"; }

setup_apt() {
  # docker.io: a real engine for the container-identity kernel tests (run in the VM).
  # prometheus (with promtool) scrapes the exporter in a kernel test; tmux drives
  # `agentcg top` in a real terminal.
  local base=(qemu-system-x86 kmod busybox-static clang-19 llvm-19 python3-bpfcc python3-venv
              python3-pip iproute2 docker.io prometheus tmux)
  local missing=()
  for p in "${base[@]}"; do installed "$p" || missing+=("$p"); done
  # struct_ops links need libbpf >= 1.4 and bpftool 7.x; bookworm has them only in backports.
  local new_bpf=0
  installed bpftool && version_at_least bpftool 7.4 && installed libbpf-dev \
    && version_at_least libbpf-dev 1:1.4 || new_bpf=1
  if [ ${#missing[@]} -eq 0 ] && [ $new_bpf = 0 ]; then return; fi
  log "installing apt packages: ${missing[*]} $([ $new_bpf = 1 ] && echo bpftool libbpf-dev)"
  local suites=("$CODENAME" "$CODENAME-updates")
  [ "$CODENAME" = bookworm ] && suites+=(bookworm-backports)
  private_apt host "${suites[@]}"
  export DEBIAN_FRONTEND=noninteractive
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get "${APT_OPTS[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if [ $new_bpf = 1 ]; then
    local target=()
    [ "$CODENAME" = bookworm ] && target=(-t bookworm-backports)
    apt-get "${APT_OPTS[@]}" "${target[@]}" install -y --no-install-recommends bpftool libbpf-dev >/dev/null
  fi
}

setup_venv() {
  local stamp=$VENV/.agentcg-stamp want
  want=$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return; fi
  log "creating venv $VENV (system site packages, for Debian's bcc)"
  # Debian's python, not a pyenv one: python3-bpfcc lives in its dist-packages.
  [ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv --system-site-packages "$VENV"
  # (pip.conf on some machines names absent local indexes: drop those warnings)
  "$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT[test,vm,metrics,docker]" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
  echo "$want" >"$stamp"
}

setup_kernel() {
  local kroot=$CACHE/kernel/$KVER stamp
  stamp="$kroot/.agentcg-stamp"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$KPINS" ]; then return; fi
  log "fetching test kernel $KVER ($KVERSION) through apt"
  local debs=$CACHE/kernel/debs
  mkdir -p "$debs"
  local need=()
  while read -r pkg sha; do
    [ -n "$pkg" ] || continue
    local f
    f=$(ls "$debs/${pkg}_"*.deb 2>/dev/null | head -1 || true)
    if [ -z "$f" ] || [ "$(sha256sum "$f" | cut -d' ' -f1)" != "$sha" ]; then
      rm -f "$debs/${pkg}_"*.deb
      need+=("$pkg=$KVERSION")
    fi
  done <<<"$KPINS"
  if [ ${#need[@]} -gt 0 ]; then
    private_apt kernel trixie-backports
    (cd "$debs" && apt-get "${APT_OPTS[@]}" download "${need[@]}" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
  fi
  rm -rf "$kroot"
  mkdir -p "$kroot"
  while read -r pkg sha; do
    [ -n "$pkg" ] || continue
    local f
    f=$(ls "$debs/${pkg}_"*.deb 2>/dev/null | head -1) || die "download of $pkg failed; check the apt mirror"
    [ "$(sha256sum "$f" | cut -d' ' -f1)" = "$sha" ] || die "$f: sha256 mismatch (pinned $sha); delete it and rerun"
    dpkg-deb -x "$f" "$kroot"
  done <<<"$KPINS"
  # bookworm's kmod cannot read the shipped modules.dep; virtme-ng looks under lib/.
  ln -sfn usr/lib "$kroot/lib"
  depmod -a -b "$kroot" "$KVER"
  # bcc looks for headers at /lib/modules/<kver>/build; make it absolute so it
  # resolves the same inside the guest, which sees this filesystem over 9p.
  ln -sfn "$kroot/usr/src/linux-headers-$KVER" "$kroot/usr/lib/modules/$KVER/build"
  echo "$KPINS" >"$stamp"
}

setup_apt
setup_venv
setup_kernel
# The libbpf BPF objects (the sched_ext scheduler): rebuilt only when a source changed.
"$ROOT/scripts/build-bpf"
log "ready: venv $VENV, kernel $CACHE/kernel/$KVER"
