#!/usr/bin/env bash
# Prints the name of the Redis image the integration tests should start.
#
# The configured image (WSNOTIFY_REDIS_IMAGE, default redis:7-alpine) is used
# when it is present or can be pulled. Machines without a registry get a small
# image built here, FROM scratch, out of this machine's own redis-server
# (Debian package) and the shared libraries it links: that image is named
# wsnotify-redis:local and built once.
set -euo pipefail

image="${WSNOTIFY_REDIS_IMAGE:-redis:7-alpine}"
local_image="wsnotify-redis:local"

if docker image inspect "$image" >/dev/null 2>&1; then
    echo "$image"; exit 0
fi
if timeout 30 docker pull "$image" >/dev/null 2>&1; then
    echo "$image"; exit 0
fi
if docker image inspect "$local_image" >/dev/null 2>&1; then
    echo "$local_image"; exit 0
fi

server="$(command -v redis-server || true)"
if [ -z "$server" ]; then
    echo "redis-image: $image cannot be pulled and there is no redis-server to build $local_image from;" >&2
    echo "redis-image: install it with: apt-get install -y redis-server" >&2
    exit 1
fi

echo "redis-image: $image unavailable; building $local_image from $server" >&2
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"
mkdir -p "$root/usr/bin" "$root/data" "$root/tmp" "$root/etc"
cp -L "$server" "$root/usr/bin/redis-server"
# The binary's shared libraries and the dynamic loader, at their own paths.
ldd "$server" | grep -oE '/[^ ]+' | sort -u | while read -r lib; do
    cp -L --parents "$lib" "$root"
done
echo "redis:x:999:999::/data:/usr/sbin/nologin" > "$root/etc/passwd"
chmod 1777 "$root/tmp"
cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/bin
WORKDIR /data
EXPOSE 6379
CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", "", "--appendonly", "no"]
DOCKERFILE
docker build --quiet -t "$local_image" "$ctx" >&2
echo "$local_image"
