#!/usr/bin/env bash
# Builds an nginx image without a registry and prints its name
# (NGINX_IMAGE, default wsnotify-nginx:local): Debian's nginx binary (apt-get
# install nginx), the libraries it links and the directories its built-in
# paths name, FROM scratch. deploy/compose.yaml mounts deploy/nginx.conf
# into it. Where a registry is reachable, nginx:stable serves as well.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/rootfs.sh

image="${NGINX_IMAGE:-wsnotify-nginx:local}"
# Bumped when the recipe changes, so that an older build is replaced.
revision=1
if [ "$(image_recipe "$image")" = "$revision" ]; then
    echo "$image"; exit 0
fi
nginx="$(command -v nginx || echo /usr/sbin/nginx)"
if [ ! -x "$nginx" ]; then
    echo "nginx-image: no nginx binary to build $image from; apt-get install -y nginx" >&2
    exit 1
fi

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"
add_binary "$root" "$nginx" /usr/sbin/nginx
# Debian's build puts its logs, temp files and pid at these paths.
mkdir -p "$root/etc/nginx" "$root/var/log/nginx" "$root/run" "$root/tmp"
for dir in body proxy fastcgi uwsgi scgi; do mkdir -p "$root/var/lib/nginx/$dir"; done
chmod 1777 "$root/tmp"
cp /etc/nginx/mime.types "$root/etc/nginx/" 2>/dev/null || true
cp deploy/nginx.conf "$root/etc/nginx/nginx.conf"
# Logs to the container's output, as the official image does.
ln -s /dev/stdout "$root/var/log/nginx/access.log"
ln -s /dev/stderr "$root/var/log/nginx/error.log"
# Workers run as nobody (nginx's built-in default user and group).
printf 'root:x:0:0::/root:/sbin/nologin\nnobody:x:65534:65534::/nonexistent:/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\nnogroup:x:65534:\n' > "$root/etc/group"
# Upstream names (wsnotify) through Docker's DNS.
echo "hosts: files dns" > "$root/etc/nsswitch.conf"
cat > "$ctx/Dockerfile" <<DOCKERFILE
FROM scratch
LABEL wsnotify.recipe=$revision
COPY rootfs/ /
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["/usr/sbin/nginx", "-g", "daemon off;"]
DOCKERFILE
build_image "$ctx" "$image"
echo "$image"
