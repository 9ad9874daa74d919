#!/bin/sh
# mmdebstrap --customize-hook: give a service user the fixed uid/gid the operator runs its pods with.
#
#   service-user.sh ROOTFS USER ID [DIR[:MODE]...]
#
# Debian's packages create their users (redis, postgres) with dynamic ids, but the pods run with
# runAsUser/runAsGroup/fsGroup = the engine profile's uid, and PostgreSQL's initdb refuses an effective uid
# without a passwd entry. So the user and its group are renumbered to ID, every file they owned follows, and
# each DIR (created if missing, with MODE if given) is owned by them. Runs on the host as root; paths inside
# the image are only ever touched through chroot (/var/run is an absolute symlink to /run: followed from the
# host, it would be the host's /run).
set -eu
root=$1 user=$2 id=$3
shift 3

in_root() { chroot "$root" "$@"; }

old_uid=$(in_root id -u "$user")
old_gid=$(in_root id -g "$user")
group=$(in_root id -gn "$user")

if [ "$old_uid" != "$id" ]; then
    if in_root getent passwd "$id" >/dev/null; then
        echo "service-user.sh: uid $id is already taken in the image: $(in_root getent passwd "$id")" >&2
        exit 1
    fi
    in_root usermod -u "$id" "$user"
    # -xdev: mmdebstrap has /proc, /sys and /dev mounted in the chroot while hooks run.
    find "$root" -xdev -uid "$old_uid" -exec chown -h "$id" {} +
fi
if [ "$old_gid" != "$id" ]; then
    if in_root getent group "$id" >/dev/null; then
        echo "service-user.sh: gid $id is already taken in the image: $(in_root getent group "$id")" >&2
        exit 1
    fi
    in_root groupmod -g "$id" "$group"
    find "$root" -xdev -gid "$old_gid" -exec chgrp -h "$id" {} +
fi

for spec in "$@"; do
    dir=${spec%%:*}
    in_root mkdir -p "$dir"
    in_root chown "$id:$id" "$dir"
    case $spec in *:*) in_root chmod "${spec#*:}" "$dir" ;; esac
done

test "$(in_root id -u "$user"):$(in_root id -g "$user")" = "$id:$id"
