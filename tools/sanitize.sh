#!/usr/bin/env bash
# Run the test suite against a fusenn built with AddressSanitizer and
# UndefinedBehaviorSanitizer (gcc, libgomp; OpenMP required).
#
#   tools/sanitize.sh [PYTEST_ARGS...]      e.g. tools/sanitize.sh -x -k gemm
#
# Builds, non-editable, into a throwaway venv with its own temporary CMake build
# directory (never build/, never the developers' environment):
#   CFLAGS  -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
#   RelWithDebInfo (-O2 -g), not stripped, so reports name file:line.
# Runs pytest on a copy of tests/ with
#   LD_PRELOAD=$(gcc -print-file-name=libasan.so)   (CPython is not instrumented:
#                                                    the ASan runtime must come first;
#                                                    libstdc++ too, for C++ exceptions)
#   ASAN_OPTIONS=detect_leaks=0                     (CPython "leaks" at exit by design)
#                allocator_may_return_null=1         (an absurd allocation fails with
#                                                    MemoryError, as without ASan, instead
#                                                    of aborting: the tests ask for some)
#   UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# pytest runs with --capture=sys: a report is written to file descriptor 2 by the
# runtime, and pytest's default fd capture would lose it when the process aborts.
# ASan reports (also from subprocesses the tests spawn) go to log files
# (ASAN_OPTIONS=log_path); UBSan ignores log_path under LD_PRELOADed ASan, so the
# output is also scanned for reports. Any report, or any failing test, fails the
# script.
set -euo pipefail
# shellcheck source=tools/lib.sh
. "$(dirname "$0")/lib.sh"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/fusenn-sanitize.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
logs="$tmp/reports"
mkdir "$logs"

libasan="$(gcc -print-file-name=libasan.so)"
[ -f "$libasan" ] || die "gcc has no libasan.so ($libasan): install gcc's sanitizer runtime"
# C++ extensions the tests load (matplotlib's ft2font) throw exceptions: ASan's
# __cxa_throw interceptor needs libstdc++ loaded at start-up, or it aborts.
libstdcxx="$(gcc -print-file-name=libstdc++.so.6)"
[ -f "$libstdcxx" ] && preload="$libasan $libstdcxx" || preload="$libasan"
san_flags="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"

section "sanitize: build with $san_flags and run the tests"
rc=0
venv_install_test \
  --pre "scikit-build-core cython cython-cmake cmake ninja numpy" \
  --openmp yes \
  --env "LD_PRELOAD=$preload" \
  --env "ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:log_path=$logs/asan" \
  --env "UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1" \
  --pytest-args "-q --capture=sys $*" \
  "$tmp/venv" "$FUSENN_ROOT/tests" \
  --no-build-isolation \
  -Cbuild-dir="$tmp/cmake-build" \
  -Ccmake.build-type=RelWithDebInfo \
  -Cinstall.strip=false \
  -Ccmake.define.FUSENN_REQUIRE_OPENMP=ON \
  "-Ccmake.define.CMAKE_C_FLAGS=$san_flags" \
  "${FUSENN_ROOT}[test,mpi]" 2>&1 | tee "$tmp/output.log" || rc=$?

# Prove the extension really is instrumented (a silently ignored flag would pass everything).
so=("$tmp"/venv/lib/python*/site-packages/fusenn/_kernels.*.so)
if [ -f "${so[0]}" ]; then
  needed="$(readelf -d "${so[0]}" | grep NEEDED || true)"
  for lib in libasan libubsan; do
    grep -q "$lib" <<<"$needed" || { echo "ERROR: ${so[0]} is not linked against $lib" >&2; rc=1; }
  done
else
  echo "ERROR: no installed extension found" >&2
  rc=1
fi

section "sanitize: reports"
shopt -s nullglob
# A log file may also hold only allocator_may_return_null's "failed to allocate"
# warnings, which are not reports.
nreports=0
for f in "$logs"/*; do
  echo "---- $f"
  cat "$f"
  if grep -qE "ERROR: |SUMMARY: |runtime error:" "$f"; then nreports=$((nreports + 1)); fi
done
[ "$nreports" -eq 0 ] || die "$nreports process(es) with AddressSanitizer reports, above"
if grep -nE "runtime error:|ERROR: AddressSanitizer|Sanitizer: |SUMMARY: (Address|UndefinedBehavior)Sanitizer" \
     "$tmp/output.log"; then
  die "sanitizer report(s) in the test output (lines above)"
fi
echo "no ASan/UBSan reports"
[ "$rc" -eq 0 ] || die "sanitizer test run failed (exit $rc)"
echo "sanitize: ok"
