# Sourced by the image scripts (redis-image.sh, wsnotify-image.sh,
# nginx-image.sh): helpers to build a root filesystem for an image
# `FROM scratch` out of this machine's own binaries, for machines that
# reach no image registry.

# add_binary ROOT SOURCE DEST: copies the executable SOURCE to ROOT/DEST,
# with every shared library it links and the dynamic loader, each at its
# own path.
add_binary() {
    local root="$1" source="$2" dest="$3"
    mkdir -p "$root/$(dirname "$dest")"
    cp -L "$source" "$root/$dest"
    add_libraries "$root" "$source"
}

# add_libraries ROOT BINARY: only the libraries and the loader of BINARY.
add_libraries() {
    local root="$1" source="$2"
    ldd "$source" | grep -oE '/[^ ]+' | sort -u | while read -r lib; do
        [ -e "$root/$lib" ] || cp -L --parents "$lib" "$root"
    done
}

# build_image CONTEXT IMAGE: docker build, quiet unless it fails.
build_image() {
    local log
    if ! log="$(DOCKER_BUILDKIT=0 docker build -t "$2" "$1" 2>&1)"; then
        echo "$log" >&2
        return 1
    fi
}

# image_recipe IMAGE: the `wsnotify.recipe` label of a local image, or
# nothing if there is no such image.
image_recipe() {
    docker image inspect -f '{{ index .Config.Labels "wsnotify.recipe" }}' "$1" 2>/dev/null || true
}
