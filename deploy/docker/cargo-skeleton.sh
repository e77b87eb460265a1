#!/bin/sh
# Copies the workspace's manifests, lockfile and cargo config from SOURCE into SKELETON, with every
# target root (lib, bins, build script, tests, benches, examples) replaced by an empty stub.
#
# The Dockerfile builds the dependencies from this skeleton in a layer of their own, which
# Docker reuses as long as no manifest or the lockfile changes: an edit to our sources then
# recompiles only our crates. New crates need no change here; they are found by their
# Cargo.toml. deploy-checks/tests/compose.rs runs this script and checks that cargo resolves the
# skeleton with the real lockfile (`cargo metadata --locked`).
#
# Usage: cargo-skeleton.sh SOURCE SKELETON
set -eu

if [ "$#" -ne 2 ]; then
    echo "usage: $0 SOURCE SKELETON" >&2
    exit 64
fi
source_dir=$1
skeleton_dir=$2

mkdir -p "$skeleton_dir"
cd "$source_dir"

copy_file() {
    mkdir -p "$skeleton_dir/$(dirname "$1")"
    cp "$1" "$skeleton_dir/$1"
}

# A library root may stay empty; every other root needs a main function.
write_stub() {
    mkdir -p "$skeleton_dir/$(dirname "$1")"
    case "$1" in
        */src/lib.rs | src/lib.rs) : >"$skeleton_dir/$1" ;;
        *) echo 'fn main() {}' >"$skeleton_dir/$1" ;;
    esac
}

copy_file Cargo.lock
for extra in rust-toolchain.toml rust-toolchain .cargo/config.toml .cargo/config; do
    if [ -f "$extra" ]; then
        copy_file "$extra"
    fi
done

find . -name Cargo.toml -not -path './target/*' -not -path '*/target/*' -not -path './.git/*' \
    -not -path './.data/*' | sort | while read -r manifest; do
    manifest=${manifest#./}
    copy_file "$manifest"
    crate_dir=$(dirname "$manifest")
    if [ "$crate_dir" = "." ]; then
        prefix=""
    else
        prefix="$crate_dir/"
    fi
    # The roots cargo discovers by convention.
    for root in "${prefix}src/lib.rs" "${prefix}src/main.rs" "${prefix}build.rs" \
        "${prefix}"src/bin/*.rs "${prefix}"src/bin/*/main.rs \
        "${prefix}"tests/*.rs "${prefix}"tests/*/main.rs \
        "${prefix}"benches/*.rs "${prefix}"benches/*/main.rs \
        "${prefix}"examples/*.rs "${prefix}"examples/*/main.rs; do
        if [ -f "$root" ]; then
            write_stub "$root"
        fi
    done
    # Roots named explicitly in the manifest (`path = "…rs"` of a [lib] or [[bin]] section).
    sed -n 's/^[[:space:]]*path[[:space:]]*=[[:space:]]*"\([^"]*\.rs\)".*/\1/p' "$manifest" |
        while read -r explicit_root; do
            if [ -f "${prefix}$explicit_root" ]; then
                write_stub "${prefix}$explicit_root"
            fi
        done
done
