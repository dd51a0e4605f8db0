#!/bin/bash
# Build the image's base locally, for hosts that cannot pull from an image registry:
# a minimal Debian bookworm with Python 3.11 and pip (what python:3.11-slim gives), made
# with debootstrap from a Debian mirror and imported into the local engine. As root:
#
#   deploy/docker/base-image.sh                 # tags emdist-base:bookworm-<recipe hash>
#   docker build --build-arg BASE_IMAGE="$(deploy/docker/base-image.sh)" \
#       -f deploy/docker/Dockerfile -t emdist:0.1.0 .
#
# It prints the tag. The root filesystem tarball is cached in $EMDIST_BASE_CACHE (default
# /var/cache/emdist-base) under a name that hashes this script and the CA certificates it
# adds, so an edit of the recipe builds a new one; a cached tarball is imported, not rebuilt.
#
# Environment (all optional): EMDIST_BASE_MIRROR (Debian mirror, default
# http://deb.debian.org/debian), EMDIST_BASE_CA_DIR (*.crt files the image must trust on
# top of Debian's, default the host's /usr/local/share/ca-certificates: a host behind a
# TLS-inspecting proxy needs its CA inside the build too), EMDIST_BASE_CACHE.
set -euo pipefail

suite=bookworm
packages=python3,python3-pip,python-is-python3,ca-certificates
mirror="${EMDIST_BASE_MIRROR:-http://deb.debian.org/debian}"
ca_dir="${EMDIST_BASE_CA_DIR:-/usr/local/share/ca-certificates}"
cache="${EMDIST_BASE_CACHE:-/var/cache/emdist-base}"

shopt -s nullglob
cas=("$ca_dir"/*.crt)
shopt -u nullglob
key=$(cat "$0" "${cas[@]}" | sha256sum | cut -c1-12)
tag="emdist-base:$suite-$key"

if docker image inspect "$tag" > /dev/null 2>&1; then
  echo "$tag"
  exit 0
fi

mkdir -p "$cache"
tarball="$cache/$suite-$key.tar"
if [[ ! -s "$tarball" ]]; then
  work=$(mktemp -d "$cache/build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  rootfs="$work/rootfs"
  # Package scripts run inside the new root make their temporary files under TMPDIR: the
  # caller's (a test's scratch folder, say) does not exist in there, /tmp does.
  export TMPDIR=/tmp
  debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" >&2
  # Like python:3.11-slim, `pip install` goes to the system Python (the image is the
  # environment): drop Debian's PEP 668 marker.
  rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
  if ((${#cas[@]})); then
    cp "${cas[@]}" "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >&2
  fi
  chroot "$rootfs" apt-get clean
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/tmp/*
  tar --numeric-owner -C "$rootfs" -cf "$work/rootfs.tar" .
  mv "$work/rootfs.tar" "$tarball"  # only a complete tarball gets the cached name
fi

docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' \
  "$tarball" "$tag" > /dev/null
echo "$tag"
