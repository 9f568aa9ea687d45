#!/usr/bin/env bash
# Prints the name of the Redis image the integration tests should start.
#
# The configured image (WSNOTIFY_REDIS_IMAGE, default redis:7-alpine) is used
# when it is present or can be pulled. Machines without a registry get a small
# image built here, FROM scratch, out of this machine's own redis-server
# (Debian package), its redis-cli (for healthchecks) and the shared libraries
# they link: that image is named wsnotify-redis:local and built once (again
# when this script's recipe changes: see `revision`).
set -euo pipefail
. "$(dirname "$0")/rootfs.sh"

image="${WSNOTIFY_REDIS_IMAGE:-redis:7-alpine}"
local_image="wsnotify-redis:local"
# Bumped when the recipe below changes, so that an image built by an older
# one is rebuilt. 2: redis-cli added.
revision=2

if [ "$image" != "$local_image" ]; then
    if docker image inspect "$image" >/dev/null 2>&1; then
        echo "$image"; exit 0
    fi
    if timeout 30 docker pull "$image" >/dev/null 2>&1; then
        echo "$image"; exit 0
    fi
fi
if [ "$(image_recipe "$local_image")" = "$revision" ]; then
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
mkdir -p "$root/data" "$root/tmp" "$root/etc"
add_binary "$root" "$server" /usr/bin/redis-server
if cli="$(command -v redis-cli)"; then
    add_binary "$root" "$cli" /usr/bin/redis-cli
fi
echo "redis:x:999:999::/data:/usr/sbin/nologin" > "$root/etc/passwd"
chmod 1777 "$root/tmp"
cat > "$ctx/Dockerfile" <<DOCKERFILE
FROM scratch
LABEL wsnotify.recipe=$revision
COPY rootfs/ /
ENV PATH=/usr/bin
WORKDIR /data
EXPOSE 6379
CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", "", "--appendonly", "no"]
DOCKERFILE
build_image "$ctx" "$local_image"
echo "$local_image"
