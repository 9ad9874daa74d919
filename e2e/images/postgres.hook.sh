#!/bin/sh
# mmdebstrap --customize-hook of the postgres image: drop the cluster that Debian's postinst created
# (/etc/postgresql/15/main, /var/lib/postgresql/15/main): the pods run initdb into their own data directory.
set -eu
root=$1
chroot "$root" pg_lsclusters --no-header | while read -r version name _; do
    chroot "$root" pg_dropcluster "$version" "$name"
done
