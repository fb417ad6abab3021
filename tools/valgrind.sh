#!/usr/bin/env bash
# valgrind memcheck of a short training run (tools/valgrind_train.py): every
# kernel family on the C backend, both dtypes, 1 and 2 threads, predict,
# evaluate, save and load.
#
#   tools/valgrind.sh                 build fusenn (RelWithDebInfo, unstripped, OpenMP
#                                     required) into a throwaway venv, then check it
#   tools/valgrind.sh --wheel W.whl   check an already built wheel instead (e.g. the
#                                     auditwheel-repaired release wheel; it is stripped,
#                                     so a report shows fewer file:line frames)
#
# Exits non-zero on any memcheck error (--error-exitcode). tools/valgrind.supp
# silences the dynamic loader's noise only; nothing in fusenn is suppressed.
# CPython keeps its own allocator (no PYTHONMALLOC=malloc: that floods memcheck
# with reports about CPython itself). Leaks are not checked: CPython does not
# free everything at exit. --fair-sched=yes: valgrind runs one thread at a time,
# and with its default lock libgomp's spin-waiting threads starve the working
# one (the run took 25-180 s instead of a steady ~20 s).
set -euo pipefail
# shellcheck source=tools/lib.sh
. "$(dirname "$0")/lib.sh"

wheel=""
if [ "${1:-}" = "--wheel" ]; then
  wheel="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
  [ -f "$wheel" ] || die "no such wheel: $2"
fi
command -v valgrind >/dev/null || die "valgrind is not installed (apt-get install valgrind)"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/fusenn-valgrind.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
py="$tmp/venv/bin/python"

section "valgrind: install ${wheel:-a RelWithDebInfo build}"
make_venv "$tmp/venv"
if [ -n "$wheel" ]; then
  pipq "$py" install "$wheel"
else
  pipq "$py" install \
    -Cbuild-dir="$tmp/cmake-build" \
    -Ccmake.build-type=RelWithDebInfo \
    -Cinstall.strip=false \
    -Ccmake.define.FUSENN_REQUIRE_OPENMP=ON \
    "$FUSENN_ROOT"
fi

section "valgrind: memcheck $(valgrind --version) on tools/valgrind_train.py"
cp "$FUSENN_ROOT/tools/valgrind_train.py" "$tmp/"
log="$tmp/memcheck.log"
rc=0
(
  cd "$tmp"   # outside the source tree: the installed fusenn is the one imported
  OMP_NUM_THREADS=2 valgrind \
    --tool=memcheck \
    --fair-sched=yes \
    --error-exitcode=99 \
    --leak-check=no \
    --num-callers=40 \
    --suppressions="$FUSENN_ROOT/tools/valgrind.supp" \
    --gen-suppressions=all \
    --log-file="$log" \
    "$py" valgrind_train.py
) || rc=$?
cat "$log"
summary="$(grep -E "ERROR SUMMARY" "$log" | tail -1 || true)"
echo "valgrind: exit $rc; ${summary#*== }"
[ "$rc" -eq 0 ] || die "valgrind memcheck failed (exit $rc; 99 = memcheck errors, see above)"
grep -qE "ERROR SUMMARY: 0 errors from 0 contexts" <<<"$summary" || die "memcheck reported errors"
echo "valgrind: ok"
