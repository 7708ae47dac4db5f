#!/usr/bin/env bash
# Build the GPU test and bench binaries on this (build) machine and pack them, stripped, into .gpu/
# (git-ignored), for a GPU host that has a driver and CUDA libraries but no Rust: copy the working tree
# with .gpu/ and run `bash scripts/gpu-run.sh` there (docs/gpu.md, "Running the GPU tests and benches on a
# machine without Rust").
#
#   bash scripts/gpu-pack.sh            # cargo test --release --no-run; cargo bench --no-run; pack
#
# The script runs cargo itself and takes no lock. On a build machine shared with other cargo users, wrap
# the whole script in the lock they use, e.g. `flock /work/cargo.lock bash scripts/gpu-pack.sh`.
#
# Packed (.gpu/):
#   kernels_compile cuda_parity cuda_cli cuda_profile cuda_faults   test binaries (libtest; filter args work)
#   kernels_bench                                                  benches/kernels.rs (criterion)
#   lmscore                                                        the CLI; cuda_cli and cuda_profile run it
#   manifest                                                       commit, build root, sizes (sourced by gpu-run.sh)
#
# cuda_cli and cuda_profile run the CLI by the absolute path cargo compiled into them
# (env!("CARGO_BIN_EXE_lmscore") = <build root>/target/release/lmscore) from <build root>
# (CARGO_MANIFEST_DIR): gpu-run.sh puts .gpu/lmscore there and, when the copy lives elsewhere, links the
# build root to the copy (it runs as root on the GPU host); the manifest records the build root.
#
# Env: GPU_PACK_DIR (default .gpu); CARGO_TARGET_DIR is honoured. The binaries need a glibc no older than
# this machine's on the GPU host (recorded in the manifest).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
DEST=${GPU_PACK_DIR:-.gpu}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
case $TARGET_DIR in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
REQUIRED_TESTS=(kernels_compile cuda_parity)
OPTIONAL_TESTS=(cuda_cli cuda_profile cuda_faults)
LIMIT_MIB=64

log=$(mktemp -d)/gpu-pack
trap 'rm -rf "$(dirname "$log")"' EXIT

say() { printf 'gpu-pack: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

say "cargo test --release --no-run (a release build of every test; ~10 min on 2 cores from scratch)"
cargo test --release --no-run >"$log.tests" 2>&1
rc=$?
[ $rc -eq 0 ] || { tail -40 "$log.tests" >&2; die "cargo test --release --no-run failed (rc $rc)"; }
cargo bench --no-run >"$log.bench" 2>&1
rc=$?
[ $rc -eq 0 ] || { tail -40 "$log.bench" >&2; die "cargo bench --no-run failed (rc $rc)"; }

# "  Executable tests/cuda_parity.rs (target/release/deps/cuda_parity-0123abcd)"
exe_of() { # file kind/name.rs
    sed -n "s|^ *Executable $2 (\(.*\))\$|\1|p" "$1" | tail -1
}

rm -rf "$DEST"
mkdir -p "$DEST" || die "cannot create $DEST"

pack() { # source name
    if ! { cp "$1" "$DEST/$2" && strip "$DEST/$2" && chmod 755 "$DEST/$2"; }; then die "copying/stripping $1"; fi
    say "packed $DEST/$2 ($(du -h "$DEST/$2" | cut -f1)) from $1"
}

for t in "${REQUIRED_TESTS[@]}" "${OPTIONAL_TESTS[@]}"; do
    exe=$(exe_of "$log.tests" "tests/$t.rs")
    if [ -z "$exe" ] || [ ! -f "$exe" ]; then
        case " ${REQUIRED_TESTS[*]} " in
            *" $t "*) die "no executable for tests/$t.rs in cargo's output" ;;
            *) say "WARNING: no executable for tests/$t.rs (left out)"; continue ;;
        esac
    fi
    pack "$exe" "$t"
done

exe=$(exe_of "$log.bench" "benches/kernels.rs")
if [ -z "$exe" ] || [ ! -f "$exe" ]; then die "no executable for benches/kernels.rs in cargo's output"; fi
pack "$exe" kernels_bench

BIN=$TARGET_DIR/release/lmscore
[ -x "$BIN" ] || die "$BIN was not built"
pack "$BIN" lmscore

# Where cuda_cli / cuda_profile look for the CLI: check the path compiled into them is the one recorded.
for t in cuda_cli cuda_profile; do
    [ -f "$DEST/$t" ] || continue
    grep -q -a -F "$BIN" "$DEST/$t" || say "WARNING: $DEST/$t does not name $BIN: gpu-run.sh cannot place the CLI for it"
done

commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain --untracked-files=no 2>/dev/null | wc -l | tr -d ' ')
{
    printf 'COMMIT=%q\n' "$commit"
    printf 'DIRTY_TRACKED_FILES=%q\n' "$dirty"
    printf 'BUILD_ROOT=%q\n' "$ROOT"
    printf 'BIN_PATH=%q\n' "$BIN"
    printf 'BUILT=%q\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf 'BUILD_GLIBC=%q\n' "$(ldd --version 2>/dev/null | head -1)"
    printf 'RUSTC=%q\n' "$(rustc --version 2>/dev/null)"
} >"$DEST/manifest"
if [ "$dirty" != 0 ]; then
    say "note: built from commit $commit plus $dirty modified tracked file(s) (the working tree as it is now)"
    git diff HEAD --stat 2>/dev/null | tail -1 | sed 's/^/gpu-pack:   /' >&2
fi

total=$(du -sk "$DEST" | cut -f1)
say "total $DEST: $((total / 1024)) MiB ($total KiB)"
# What travels with it: tracked and untracked-but-not-ignored files.
tree=$(git ls-files -co --exclude-standard -z 2>/dev/null | du -ck --files0-from=- 2>/dev/null | tail -1 | cut -f1)
if [ -n "$tree" ]; then
    say "working tree (tracked + untracked, not ignored): $((tree / 1024)) MiB; with $DEST: $(((tree + total) / 1024)) MiB of the ${LIMIT_MIB} MiB that may travel"
    [ $((tree + total)) -lt $((LIMIT_MIB * 1024 * 7 / 8)) ] || say "WARNING: over 7/8 of ${LIMIT_MIB} MiB: ignore or leave out something"
fi
say "carry list for the device run: [\"$DEST\"]"
say "run there:  bash scripts/gpu-run.sh      (outputs under \$OUT, else ./gpu-out)"
