#!/usr/bin/env bash
# Fails unless every binary given links nothing dynamically but the C runtime: the vDSO,
# libc, libm, libgcc_s and the dynamic loader. Everything else (OpenSSL, zlib, zstd,
# librdkafka, SQLite) is built from source into the binaries, so a fresh machine needs no
# -dev package to build them and the FROM scratch images carry only the C runtime.
#
# usage: scripts/check-binary-deps.sh BINARY...
set -euo pipefail
(($#)) || { echo "usage: $0 BINARY..." >&2; exit 2; }
allowed='^(linux-vdso\.so\.1|libc\.so\.6|libm\.so\.6|libgcc_s\.so\.1|/lib64/ld-linux-x86-64\.so\.2|/lib/ld-linux-aarch64\.so\.1|ld-linux-x86-64\.so\.2|ld-linux-aarch64\.so\.1)$'
status=0
for binary in "$@"; do
    [ -x "$binary" ] || { echo "check-binary-deps: $binary: not an executable" >&2; exit 2; }
    libraries=$(ldd "$binary" | awk '{print $1}')
    unexpected=$(grep -Ev "$allowed" <<<"$libraries" || true)
    if [ -n "$unexpected" ]; then
        echo "FAILED: $binary links more than the C runtime:" $unexpected
        status=1
    else
        echo "ok: $binary links only:" $libraries
    fi
done
exit $status
