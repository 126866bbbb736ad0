#!/usr/bin/env bash
# Installs ringxfer for C and C++ builds:
#   PREFIX/lib/libringxfer.so.X.Y.Z (+ .so.X and .so links), PREFIX/lib/libringxfer.a,
#   PREFIX/include/ringxfer.h and ringxfer.hpp, PREFIX/lib/pkgconfig/ringxfer.pc,
#   PREFIX/lib/cmake/ringxfer/ringxferConfig.cmake (+ ConfigVersion).
#
# usage: ffi/install.sh [--prefix DIR] [--from DIR]
#   --prefix DIR   where to install (default /usr/local)
#   --from DIR     install libraries already built in DIR (e.g. target/debug) instead of
#                  running `cargo build --release -p ringxfer-ffi`
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
prefix=/usr/local
from=""
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    --from) from="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/Cargo.toml" | head -n1)"
major="${version%%.*}"
if [ -z "$from" ]; then
  (cd "$here/.." && cargo build --release -p ringxfer-ffi)
  from="$(cd "$here/.." && pwd)/target/release"
fi
for f in libringxfer_ffi.so libringxfer_ffi.a; do
  [ -f "$from/$f" ] || { echo "install.sh: $from/$f not found" >&2; exit 1; }
done

install -d "$prefix/lib/pkgconfig" "$prefix/lib/cmake/ringxfer" "$prefix/include"
install -m 0755 "$from/libringxfer_ffi.so" "$prefix/lib/libringxfer.so.$version"
ln -sf "libringxfer.so.$version" "$prefix/lib/libringxfer.so.$major"
ln -sf "libringxfer.so.$major" "$prefix/lib/libringxfer.so"
install -m 0644 "$from/libringxfer_ffi.a" "$prefix/lib/libringxfer.a"
install -m 0644 "$here/include/ringxfer.h" "$here/include/ringxfer.hpp" "$prefix/include/"

cat > "$prefix/lib/pkgconfig/ringxfer.pc" <<PC
prefix=$prefix
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: ringxfer
Description: Leak-proof, allocation-free transfer engine for KV-cache blocks
Version: $version
Libs: -L\${libdir} -lringxfer
Libs.private: -lpthread -ldl -lm -lrt -lgcc_s
Cflags: -I\${includedir}
PC

cat > "$prefix/lib/cmake/ringxfer/ringxferConfig.cmake" <<'CMAKE'
# find_package(ringxfer) -> the imported target ringxfer::ringxfer (shared library).
get_filename_component(_ringxfer_prefix "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
if(NOT TARGET ringxfer::ringxfer)
  add_library(ringxfer::ringxfer SHARED IMPORTED)
  set_target_properties(ringxfer::ringxfer PROPERTIES
    IMPORTED_LOCATION "${_ringxfer_prefix}/lib/libringxfer.so"
    INTERFACE_INCLUDE_DIRECTORIES "${_ringxfer_prefix}/include")
endif()
set(ringxfer_FOUND TRUE)
unset(_ringxfer_prefix)
CMAKE

cat > "$prefix/lib/cmake/ringxfer/ringxferConfigVersion.cmake" <<CMAKE
set(PACKAGE_VERSION "$version")
if(PACKAGE_FIND_VERSION VERSION_GREATER PACKAGE_VERSION)
  set(PACKAGE_VERSION_COMPATIBLE FALSE)
else()
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
  if(PACKAGE_FIND_VERSION STREQUAL PACKAGE_VERSION)
    set(PACKAGE_VERSION_EXACT TRUE)
  endif()
endif()
CMAKE
echo "installed ringxfer $version into $prefix"
