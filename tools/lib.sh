# shellcheck shell=bash
# Shared helpers for tools/*.sh and .ci/run. Source it; do not run it.
#   . "$(dirname "$0")/lib.sh"        (from tools/)
# Everything here works on throwaway virtual environments: nothing touches the
# developers' environment or the build/ directory of their editable install.

# shellcheck disable=SC2034  # used by the scripts that source this file
FUSENN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"   # the interpreter new virtual environments are made from

section() {
  printf '\n======== %s ======== [%s]\n' "$*" "$(date +%H:%M:%S)"
}

die() {
  echo "ERROR: $*" >&2
  exit 1
}

# Quiet pip: hide the "Location ... is ignored" lines some pip configurations print.
pipq() {
  local py=$1; shift
  "$py" -m pip --quiet "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

# make_venv DIR: a fresh virtual environment with a current pip; prints nothing else.
# (Every helper checks each step itself: callers may run it as `helper || rc=$?`,
# where bash turns `set -e` off.)
make_venv() {
  rm -rf "$1" || return
  "$PYTHON" -m venv "$1" || return
  pipq "$1/bin/python" install --upgrade pip || return
}

# run_pytest COMMAND...: runs a pytest command line (e.g. `python -m pytest -q`);
# "collected no tests" (exit code 5) is a failure: for this project an empty run
# means a broken checkout or test layout, never a pass.
run_pytest() {
  local rc=0
  "$@" || rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "ERROR: pytest collected no tests for: $*" >&2
    return 1
  fi
  return "$rc"
}

# venv_install_test [options] VENV TESTS_DIR PIP_INSTALL_ARGS...
#   Makes a fresh venv at VENV, runs `pip install PIP_INSTALL_ARGS...` in it,
#   copies TESTS_DIR to a temporary directory outside the source tree (so a
#   src/ checkout can never be imported instead of the installed package),
#   checks where fusenn is imported from, and runs pytest there.
# Options:
#   --pre PKGS          pip install these first (e.g. build deps for --no-build-isolation)
#   --openmp yes|no     require fusenn.has_openmp() to be True / False
#   --env NAME=VALUE    set for the pytest run only (repeatable)
#   --unset NAME        unset for the pytest run only (repeatable)
#   --pytest-args ARGS  extra pytest arguments (one word-split string)
venv_install_test() {
  local pre="" openmp="" pytest_args="" envcmd=(env)
  while [ $# -gt 0 ]; do
    case "$1" in
      --pre) pre=$2; shift 2 ;;
      --openmp) openmp=$2; shift 2 ;;
      --env) envcmd+=("$2"); shift 2 ;;
      --unset) envcmd+=(-u "$2"); shift 2 ;;
      --pytest-args) pytest_args=$2; shift 2 ;;
      *) break ;;
    esac
  done
  local venv=$1 tests=$2; shift 2
  local py="$venv/bin/python"

  echo "-- venv $venv"
  make_venv "$venv" || return
  if [ -n "$pre" ]; then
    echo "-- pip install $pre"
    # shellcheck disable=SC2086
    pipq "$py" install $pre || return
  fi
  echo "-- pip install $*"
  pipq "$py" install "$@" || { echo "ERROR: pip install failed" >&2; return 1; }

  local tdir rc=0
  tdir="$(mktemp -d "${TMPDIR:-/tmp}/fusenn-tests.XXXXXX")" || return
  cp -r "$tests" "$tdir/tests" || { rm -rf "$tdir"; return 1; }
  # No `set -e` inside ( ... ) || rc=$?: every step needs its own `|| exit`.
  (
    cd "$tdir" || exit 1
    "${envcmd[@]}" FUSENN_EXPECT_OPENMP="$openmp" "$py" - <<'EOF' || exit 1
import os, sys
import fusenn
where = os.path.realpath(fusenn.__file__)
print(f"-- fusenn {fusenn.__version__} from {where}; has_openmp={fusenn.has_openmp()} "
      f"gemm_isa={fusenn.gemm_isa()} threads={fusenn.get_num_threads()}")
if not where.startswith(os.path.realpath(sys.prefix) + os.sep):
    sys.exit(f"ERROR: fusenn imported from {where}, not from the environment {sys.prefix}")
want = os.environ["FUSENN_EXPECT_OPENMP"]
if want and fusenn.has_openmp() != (want == "yes"):
    sys.exit(f"ERROR: has_openmp() is {fusenn.has_openmp()}, expected {want}")
EOF
    # shellcheck disable=SC2086
    run_pytest "${envcmd[@]}" "$py" -m pytest -p no:cacheprovider $pytest_args tests
  ) || rc=$?
  rm -rf "$tdir"
  return "$rc"
}
