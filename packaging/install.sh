#!/bin/sh
# Install nordwgd: the Python package, its commands, systemd units, D-Bus and polkit files,
# and the example config. See packaging/README.md.
#
#   packaging/install.sh [--root DIR] [--prefix /usr] [--python PATH] [--enable]
#                        [--with-netdev-rule] [--no-config]
#
# --root DIR        install below DIR (a package build root, or a container's file system);
#                   DESTDIR=DIR in the environment means the same
# --prefix P        commands go to P/bin, the private virtualenv to P/lib/nordwgd (default /usr);
#                   units go to /usr/lib/systemd/system for /usr, else /etc/systemd/system
# --python PATH     do not build a virtualenv: the commands run PATH, which must already be able
#                   to import nordwgd (a development checkout's venv, or a distribution package)
# --enable          enable nordwgd.service, the kill switch and both timers (systemctl --root)
# --with-netdev-rule  also install the polkit rule letting group netdev control the tunnel
# --no-config       do not install /etc/nordwgd/nordwgd.toml even when it is absent
set -eu

source_dir=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)
root=${DESTDIR:-}
prefix=/usr
python=
enable=no
netdev_rule=no
config=yes
system_python=${NORDWGD_SYSTEM_PYTHON:-/usr/bin/python3}

die() { echo "install.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case $1 in
        --root) [ $# -ge 2 ] || die "--root needs a directory"; root=$2; shift 2 ;;
        --root=*) root=${1#--root=}; shift ;;
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; prefix=$2; shift 2 ;;
        --prefix=*) prefix=${1#--prefix=}; shift ;;
        --python) [ $# -ge 2 ] || die "--python needs an interpreter path"; python=$2; shift 2 ;;
        --python=*) python=${1#--python=}; shift ;;
        --enable) enable=yes; shift ;;
        --with-netdev-rule) netdev_rule=yes; shift ;;
        --no-config) config=no; shift ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done

case $prefix in /*) ;; *) die "--prefix must be an absolute path: $prefix" ;; esac
root=${root%/}
if [ "$prefix" = /usr ]; then unitdir=/usr/lib/systemd/system; else unitdir=/etc/systemd/system; fi
libdir=$prefix/lib/nordwgd
bindir=$prefix/bin

say() { echo "[#] $*"; }

put() { # put MODE SOURCE TARGET: install one file below the root
    say "install -m $1 $2 $root$3"
    install -D -m "$1" "$2" "$root$3"
}

# The package: a private virtualenv that also sees the distribution's python3-nftables and
# python3-systemd, unless an interpreter that already has nordwgd was named.
if [ -z "$python" ]; then
    [ -x "$system_python" ] || die "no $system_python; pass --python or set NORDWGD_SYSTEM_PYTHON"
    say "$system_python -m venv --system-site-packages $root$libdir"
    "$system_python" -m venv --system-site-packages "$root$libdir"
    # Build from a copy: pip builds in the source tree otherwise (build/, *.egg-info).
    build_dir=$(mktemp -d "${TMPDIR:-/tmp}/nordwgd-build.XXXXXX")
    trap 'rm -rf "$build_dir"' EXIT
    # -L: nordwgd/data is a link to the top-level data/ directory.
    cp -RL "$source_dir/pyproject.toml" "$source_dir/nordwgd" "$source_dir/nordwgd_tray" "$build_dir/"
    for extra in README.md LICENSE; do
        if [ -e "$source_dir/$extra" ]; then cp "$source_dir/$extra" "$build_dir/"; fi
    done
    find "$build_dir" -name __pycache__ -prune -exec rm -rf {} +
    say "$root$libdir/bin/pip install $source_dir"
    "$root$libdir/bin/pip" install --quiet --disable-pip-version-check "$build_dir"
    python=$libdir/bin/python
else
    [ -x "$root$python" ] || [ -x "$python" ] || die "--python $python is not executable"
fi

wrapper() { # wrapper NAME FUNCTION: a command that runs nordwgd.launch.FUNCTION() (the checked
    # entry points of pyproject.toml's console scripts) with the chosen python
    say "write $root$bindir/$1 -> $python (nordwgd.launch.$2)"
    mkdir -p "$root$bindir"
    cat > "$root$bindir/$1.tmp" <<WRAPPER
#!/bin/sh
# Installed by nordwgd's packaging/install.sh.
exec '$python' -I -B -c 'import sys; sys.argv[0] = "$1"; from nordwgd.launch import $2; sys.exit($2())' "\$@"
WRAPPER
    chmod 0755 "$root$bindir/$1.tmp"
    mv -f "$root$bindir/$1.tmp" "$root$bindir/$1"
}
wrapper nordwgd daemon
wrapper nordwgctl cli
wrapper nordwgd-killswitch killswitch
wrapper nordwgd-tray tray

# The tray applet's icons, autostart and menu entries (the GNOME Shell extension has a flavour
# per Shell generation, so it is installed by hand; see the README).
for icon in "$source_dir"/data/icons/hicolor/scalable/status/*.svg; do
    put 0644 "$icon" "/usr/share/icons/hicolor/scalable/status/${icon##*/}"
done
put 0644 "$source_dir/data/autostart/nordwgd-tray.desktop" /etc/xdg/autostart/nordwgd-tray.desktop
put 0644 "$source_dir/data/applications/nordwgd-tray.desktop" \
    /usr/share/applications/nordwgd-tray.desktop

# systemd units, with the command paths rewritten for the prefix.
for unit in "$source_dir"/units/*.service "$source_dir"/units/*.timer; do
    name=$(basename "$unit")
    say "install -m 0644 $unit $root$unitdir/$name"
    mkdir -p "$root$unitdir"
    sed -e "s|/usr/bin/nordwgd|$bindir/nordwgd|g" "$unit" > "$root$unitdir/$name.tmp"
    chmod 0644 "$root$unitdir/$name.tmp"
    mv -f "$root$unitdir/$name.tmp" "$root$unitdir/$name"
done

# D-Bus: bus policy, system activation, introspection data.
put 0644 "$source_dir/dbus/org.nordwgd.Nordwgd1.conf" /usr/share/dbus-1/system.d/org.nordwgd.Nordwgd1.conf
put 0644 "$source_dir/dbus/org.nordwgd.Nordwgd1.service" \
    /usr/share/dbus-1/system-services/org.nordwgd.Nordwgd1.service
for xml in "$source_dir"/dbus/*.xml; do
    [ -e "$xml" ] || continue
    put 0644 "$xml" "/usr/share/dbus-1/interfaces/$(basename "$xml")"
done

# polkit.
put 0644 "$source_dir/data/polkit/org.nordwgd.nordwgd1.policy" \
    /usr/share/polkit-1/actions/org.nordwgd.nordwgd1.policy
if [ "$netdev_rule" = yes ]; then
    put 0644 "$source_dir/data/polkit/org.nordwgd.nordwgd1.rules" \
        /usr/share/polkit-1/rules.d/50-org.nordwgd.nordwgd1.rules
fi

# Documentation, and the config (never overwritten: it is the administrator's).
for doc in "$source_dir/README.md" "$source_dir/packaging/README.md"; do
    [ -e "$doc" ] || continue
    put 0644 "$doc" /usr/share/doc/nordwgd/README.md
    break
done
for doc in docs/security.md docs/modes.md data/systemd/namespace-mode.conf; do
    # namespace-mode.conf: the drop-in namespace mode needs (see modes.md), for the admin to copy
    put 0644 "$source_dir/$doc" "/usr/share/doc/nordwgd/${doc##*/}"
done
example=$source_dir/data/nordwgd.toml.example
if [ -e "$example" ]; then
    put 0644 "$example" /usr/share/doc/nordwgd/nordwgd.toml.example
    if [ "$config" = yes ] && [ ! -e "$root/etc/nordwgd/nordwgd.toml" ]; then
        put 0644 "$example" /etc/nordwgd/nordwgd.toml
    fi
fi

if [ "$enable" = yes ]; then
    say "systemctl --root=${root:-/} enable nordwgd.service nordwgd-killswitch.service nordwgd-renew.timer nordwgd-health.timer"
    systemctl --root="${root:-/}" enable nordwgd.service nordwgd-killswitch.service \
        nordwgd-renew.timer nordwgd-health.timer
fi
if [ -z "$root" ] && [ -d /run/systemd/system ]; then
    say "systemctl daemon-reload"
    systemctl daemon-reload
    if command -v busctl >/dev/null && busctl status >/dev/null 2>&1; then
        say "busctl call org.freedesktop.DBus / org.freedesktop.DBus ReloadConfig"
        busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus ReloadConfig || true
    fi
fi
