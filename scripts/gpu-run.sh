#!/usr/bin/env bash
# Run the packed GPU tests, benches and sanitizer checks on a GPU host without Rust, in one go that fits a
# short lease (~8 minutes by default). Build and pack first on the build machine (scripts/gpu-pack.sh);
# then, in the repository root of the copy on the GPU host (the copy must hold .gpu/):
#
#   bash scripts/gpu-run.sh             # everything; results under $OUT (default ./gpu-out)
#
# Stages, most important first; each has its own timeout, and a global budget (GPU_RUN_BUDGET seconds,
# default 520) cuts later stages short rather than letting a slow one eat the rest:
#   env              nvidia-smi, date, commit, the CUDA libraries found, ldd of the binaries (env.txt)
#   kernels_compile  every kernel file through the real NVRTC, registers / spills      (tests.log)
#   cuda_parity      every op and whole models against the CPU oracle                  (tests.log)
#   cuda_cli         `lmscore score --device cuda` against --device cpu                (tests.log)
#   cuda_profile     copies / syncs per batch from `score --profile`                   (tests.log)
#   cuda_faults      the backend's error paths that a GPU reaches                      (tests.log)
#   bench_end_to_end criterion end_to_end/ groups: tokens/s, % of the FLOP limit       (bench.log)
#   bench_attention  attention/ groups: TFLOP/s, % of the dense f16 peak                (bench.log)
#   bench_fusions    parallel_residual/ and qkv_projection/: before vs after            (bench.log)
#   memcheck:TEST, racecheck:TEST   compute-sanitizer on a few cuda_parity tests       (sanitizer.log)
#   bench_other      the remaining bench groups, only with the time left               (bench.log)
# Every stage's PASS / FAIL / TIMEOUT / SKIPPED goes to $OUT/summary.txt (also printed at the end). $OUT
# holds 5 files (the device tool returns 8 at most), each cut to 12 MiB (it returns 64 MiB in all).
#
# Env knobs:
#   OUT                     output folder (default ./gpu-out)
#   GPU_RUN_BUDGET          global seconds for all stages (default 520; give the device call ~50 s more)
#   GPU_RUN_STAGES          comma list of stages to run (default all): names or globs; "memcheck" means
#                           every memcheck:TEST, e.g. GPU_RUN_STAGES=cuda_parity,memcheck,bench
#   GPU_RUN_TIMEOUT_<STAGE> per-stage timeout in seconds, e.g. GPU_RUN_TIMEOUT_cuda_parity=300
#                           (sanitizer stages: GPU_RUN_TIMEOUT_memcheck / GPU_RUN_TIMEOUT_racecheck, per test)
#   GPU_RUN_PARITY_FILTER   libtest filter args for cuda_parity (default: none = every test)
#   GPU_RUN_SANITIZE_TESTS  cuda_parity tests under compute-sanitizer (space-separated filters)
#   GPU_RUN_BENCH_ARGS      criterion options (default --warm-up-time 0.5 --measurement-time 2 --sample-size 10 --noplot)
#   GPU_RUN_KEEP_LD_PATH=1  do not search for libcublas / libnvrtc / libcuda; keep LD_LIBRARY_PATH as it is
#   GPU_RUN_CUDA_LIB_DIRS   colon list of folders to search first for the CUDA libraries
#   GPU_RUN_SANITIZER       path of compute-sanitizer
#   GPU_RUN_BIN_DIR         where the packed binaries are (default .gpu)
#   COMMIT                  the commit to record when the copy has no .git (else .gpu/manifest's)
set -u
set -o pipefail

cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
BIN=${GPU_RUN_BIN_DIR:-.gpu}
case $BIN in /*) ;; *) BIN=$ROOT/$BIN ;; esac
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT" || { echo "gpu-run: cannot create $OUT" >&2; exit 1; }
case $OUT in /*) ;; *) OUT=$(cd "$OUT" && pwd) ;; esac
BUDGET=${GPU_RUN_BUDGET:-520}
RESERVE=10   # seconds kept back for the summary
MIN_STAGE=15 # a stage with less than this left is skipped
START=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-run.XXXXXX")
SUMMARY=$OUT/summary.txt
ENVTXT=$OUT/env.txt
TESTS_LOG=$OUT/tests.log
BENCH_LOG=$OUT/bench.log
SAN_LOG=$OUT/sanitizer.log
BENCH_RESULTS=$WORK/bench-results.txt
: >"$SUMMARY"
: >"$ENVTXT"
: >"$TESTS_LOG"
: >"$BENCH_LOG"
: >"$SAN_LOG"
FAILED=0
CREATED_LINK=
# Killed from outside (the device tool's own timeout): still write the summary and the bench figures.
trap 'record run "KILLED" "$(elapsed)" "signal received; later stages did not run"; finish; exit 143' TERM INT

say() { printf 'gpu-run [%4ss] %s\n' "$(($(date +%s) - START))" "$*"; }
elapsed() { echo $(($(date +%s) - START)); }

record() { # stage status seconds detail
    printf '%-16s %4ss  %-30s %s\n' "$2" "$3" "$1" "$4" >>"$SUMMARY"
    say "$1: $2 ($3 s) $4"
    case $2 in PASS | SKIPPED* | UNSUPPORTED* | "NOT RUN"*) ;; *) FAILED=$((FAILED + 1)) ;; esac
}

selected() { # stage name; GPU_RUN_STAGES entries match a whole name or a prefix
    [ -z "${GPU_RUN_STAGES:-}" ] && return 0
    local s
    local IFS=,
    for s in $GPU_RUN_STAGES; do
        # shellcheck disable=SC2254
        case $1 in $s | $s:*) return 0 ;; esac
    done
    return 1
}

stage_timeout() { # stage default -> the per-stage timeout (GPU_RUN_TIMEOUT_<stage>, ':' and '-' as '_')
    local var=GPU_RUN_TIMEOUT_${1//[^A-Za-z0-9_]/_}
    echo "${!var:-$2}"
}

# run_stage NAME LOG TIMEOUT CMD...: runs CMD with its own timeout (cut to the global budget), output
# appended to LOG (and kept in $WORK/NAME.log); sets STAGE_RC and STAGE_SECS; returns 1 when skipped.
run_stage() {
    local name=$1 log=$2 limit=$3
    shift 3
    local left=$((BUDGET - $(elapsed) - RESERVE))
    if [ "$left" -lt "$MIN_STAGE" ]; then
        record "$name" "SKIPPED" 0 "global budget (GPU_RUN_BUDGET=${BUDGET}s): ${left}s left"
        return 1
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local slog=$WORK/${name//[^A-Za-z0-9_.-]/_}.log
    say "$name: start (timeout ${limit}s)"
    printf '\n===== %s: %s\n===== timeout %ss, started %s, %ss into the run\n' \
        "$name" "$*" "$limit" "$(date -u +%H:%M:%S)" "$(elapsed)" >>"$log"
    local t0
    t0=$(date +%s)
    timeout -k 10 "$limit" "$@" </dev/null 2>&1 | tee "$slog" >>"$log"
    STAGE_RC=${PIPESTATUS[0]}
    STAGE_SECS=$(($(date +%s) - t0))
    STAGE_LOG=$slog
    printf '===== %s: exit %s after %ss\n' "$name" "$STAGE_RC" "$STAGE_SECS" >>"$log"
    return 0
}

# The libtest result line(s) of a stage's log, e.g. "ok. 14 passed; 0 failed; 0 ignored; ...".
libtest_result() {
    grep -E '^test result:' "$1" | sed 's/^test result: //; s/; finished in.*//' | paste -sd'|' -
}

# classify a test stage: PASS / FAIL / TIMEOUT / NO TESTS, with libtest's counts and any SKIPPED lines.
classify_test() { # name
    local name=$1 res skips detail status
    res=$(libtest_result "$STAGE_LOG")
    skips=$(grep -c '^SKIPPED' "$STAGE_LOG")
    detail=${res:-no libtest result line}
    [ "$skips" -gt 0 ] && detail="$detail; $skips SKIPPED line(s)"
    case $STAGE_RC in
        0) status=PASS
           if grep -q '^running 0 tests' "$STAGE_LOG" && ! grep -q '^running [1-9]' "$STAGE_LOG"; then
               status="NO TESTS"; detail="the filter matched no test; $detail"
           fi ;;
        124 | 137) status=TIMEOUT ;;
        *) status="FAIL(rc=$STAGE_RC)"
           local failed
           failed=$(sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$STAGE_LOG" | paste -sd' ' -)
           [ -n "$failed" ] && detail="$detail; failed: $failed" ;;
    esac
    record "$name" "$status" "$STAGE_SECS" "$detail"
}

finish() {
    local t
    t=$(elapsed)
    {
        echo
        echo "total ${t}s of a ${BUDGET}s budget; $FAILED stage(s) not passed"
        if [ -s "$BENCH_RESULTS" ]; then
            echo
            echo "bench results (criterion: [low estimate, high]; thrpt in elements/s = FLOP/s where the name says FLOP):"
            cat "$BENCH_RESULTS"
        fi
    } >>"$SUMMARY"
    # Keep every returned file under the device tool's 16 MiB per file: the head and tail of a huge log.
    local f
    for f in "$OUT"/*; do
        [ -f "$f" ] || continue
        if [ "$(wc -c <"$f")" -gt $((12 * 1024 * 1024)) ]; then
            { head -c $((5 * 1024 * 1024)) "$f"; printf '\n\n[... gpu-run cut the middle of this log ...]\n\n'; tail -c $((5 * 1024 * 1024)) "$f"; } >"$WORK/cut" && mv "$WORK/cut" "$f"
        fi
    done
    [ -n "$CREATED_LINK" ] && rm -f "$CREATED_LINK"
    echo
    echo "===== $SUMMARY"
    cat "$SUMMARY"
    rm -rf "$WORK"
}

# ---------------------------------------------------------------------------------------------- env --
# The CUDA libraries: libcublas.so.13 (+ libcublasLt), libnvrtc.so.13 (+ libnvrtc-builtins), libcuda.so.1.
python_site_dirs() {
    local py
    for py in python3 /opt/torch/.venv/bin/python3 /opt/conda/bin/python3 /usr/bin/python3; do
        command -v "$py" >/dev/null 2>&1 || continue
        timeout 20 "$py" -c 'import site, sys
for d in site.getsitepackages() + [site.getusersitepackages()]: print(d)' 2>/dev/null
    done
    ls -d /opt/*/.venv/lib/python3*/site-packages /opt/*/lib/python3*/site-packages \
        /usr/local/lib/python3*/dist-packages /usr/lib/python3/dist-packages 2>/dev/null
}

lib_dirs_to_search() {
    local d
    if [ -n "${GPU_RUN_CUDA_LIB_DIRS:-}" ]; then
        tr ':' '\n' <<<"$GPU_RUN_CUDA_LIB_DIRS"
    fi
    for d in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda /usr/local/cuda-13* /usr/local/cuda-*; do
        [ -n "$d" ] || continue
        echo "$d/lib64"
        echo "$d/targets/x86_64-linux/lib"
        echo "$d/lib"
    done
    python_site_dirs | while read -r d; do
        echo "$d/nvidia/cu13/lib"
        echo "$d/nvidia/cublas/lib"
        echo "$d/nvidia/cuda_nvrtc/lib"
    done
    echo /usr/local/nvidia/lib64
    echo /usr/local/nvidia/lib
    echo /usr/lib/x86_64-linux-gnu
    echo /usr/lib64
}

find_lib_dir() { # soname -> the first folder holding it (never a stubs folder)
    local so=$1 d hit
    while read -r d; do
        [ -n "$d" ] && [ -e "$d/$so" ] && { echo "$d"; return 0; }
    done < <(lib_dirs_to_search | awk '!seen[$0]++')
    hit=$(ldconfig -p 2>/dev/null | awk -v so="$so" '$1 == so { print $NF; exit }')
    [ -n "$hit" ] && { dirname "$hit"; return 0; }
    hit=$(timeout 60 find / -xdev \( -path /proc -o -path /sys -o -path '*/stubs' \) -prune -o -name "$so" -print 2>/dev/null | head -1)
    [ -n "$hit" ] && { dirname "$hit"; return 0; }
    return 1
}

setup_libraries() {
    if [ "${GPU_RUN_KEEP_LD_PATH:-0}" = 1 ]; then
        echo "GPU_RUN_KEEP_LD_PATH=1: library search skipped"
        return
    fi
    local so d add=
    for so in libcublas.so.13 libnvrtc.so.13; do
        if d=$(find_lib_dir "$so"); then
            echo "$so: $d ($(readlink -f "$d/$so"))"
            case ":$add:" in *":$d:"*) ;; *) add=${add:+$add:}$d ;; esac
            [ "$so" = libnvrtc.so.13 ] && { ls "$d"/libnvrtc-builtins.so* >/dev/null 2>&1 || echo "WARNING: no libnvrtc-builtins.so* next to $d/$so"; }
        else
            echo "WARNING: $so not found"
        fi
    done
    if ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
        echo "libcuda.so.1: on the loader's cache ($(ldconfig -p | awk '$1 == "libcuda.so.1" { print $NF; exit }'))"
    elif d=$(find_lib_dir libcuda.so.1); then
        echo "libcuda.so.1: $d (not in the loader's cache; added)"
        add=${add:+$add:}$d
    else
        echo "WARNING: libcuda.so.1 not found (no driver?)"
    fi
    export LD_LIBRARY_PATH=$add${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
}

find_sanitizer() {
    local c
    for c in "${GPU_RUN_SANITIZER:-}" "$(command -v compute-sanitizer 2>/dev/null)" \
        /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer \
        /usr/local/cuda-13*/bin/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer; do
        [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return 0; }
    done
    return 1
}

# The commit: git if the copy has .git, else $COMMIT, else what gpu-pack.sh wrote.
MANIFEST_COMMIT=unknown BUILD_ROOT='' BIN_PATH='' DIRTY_TRACKED_FILES='?' BUILT='' BUILD_GLIBC='' RUSTC=''
USER_COMMIT=${COMMIT:-}
if [ -f "$BIN/manifest" ]; then
    # shellcheck disable=SC1091
    . "$BIN/manifest" 2>/dev/null
    MANIFEST_COMMIT=${COMMIT:-unknown}
fi
COMMIT=$USER_COMMIT
if git -C "$ROOT" rev-parse HEAD >/dev/null 2>&1; then
    RUN_COMMIT="$(git -C "$ROOT" rev-parse HEAD) (git; $(git -C "$ROOT" status --porcelain --untracked-files=no | wc -l | tr -d ' ') modified tracked files)"
elif [ -n "$COMMIT" ]; then
    RUN_COMMIT="$COMMIT (COMMIT)"
else
    RUN_COMMIT="$MANIFEST_COMMIT (no .git here: the commit gpu-pack.sh built from)"
fi
chmod +x "$BIN"/kernels_compile "$BIN"/cuda_* "$BIN"/kernels_bench "$BIN"/lmscore 2>/dev/null
SANITIZER=$(find_sanitizer) || SANITIZER=

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -a)"
    echo "root: $ROOT"
    echo "commit of this tree: $RUN_COMMIT"
    echo "binaries: built from $MANIFEST_COMMIT + ${DIRTY_TRACKED_FILES} modified tracked file(s), at ${BUILT:-?} in ${BUILD_ROOT:-?} (${BUILD_GLIBC:-?}; ${RUSTC:-?})"
    echo "glibc here: $(ldd --version 2>/dev/null | head -1)"
    echo
    setup_libraries
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    echo
    echo "--- nvidia-smi"
    timeout 30 nvidia-smi 2>&1 || echo "(nvidia-smi failed or absent)"
    timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit --format=csv 2>&1
    echo "--- nvcc"
    timeout 10 nvcc --version 2>&1 | tail -2 || echo "(no nvcc on PATH)"
    echo "--- compute-sanitizer"
    if [ -n "$SANITIZER" ]; then echo "$SANITIZER: $(timeout 20 "$SANITIZER" --version 2>&1 | tail -1)"; else echo "not found"; fi
    echo "--- packed binaries ($BIN)"
    ls -l "$BIN" 2>&1
    if [ -x "$BIN/cuda_parity" ]; then
        echo "--- ldd $BIN/cuda_parity"
        ldd "$BIN/cuda_parity" 2>&1
    fi
} >"$ENVTXT" 2>&1
say "env: $(grep -m1 -E '^(NVIDIA-SMI|\| NVIDIA-SMI)' "$ENVTXT" | tr -s ' ' || echo 'nvidia-smi: none') -> $ENVTXT"
record env PASS "$(elapsed)" "commit $RUN_COMMIT; LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"

export LMSCORE_REQUIRE_CUDA=1 LMSCORE_REQUIRE_NVRTC=1
export LMSCORE_FIXTURES=${LMSCORE_FIXTURES:-$ROOT/tests/fixtures}
export LMSCORE_KERNEL_CACHE=${LMSCORE_KERNEL_CACHE:-$WORK/kernel-cache}
export CRITERION_HOME=${CRITERION_HOME:-$WORK/criterion}
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}

# cuda_cli / cuda_profile run <build root>/target/release/lmscore from <build root>, both compiled in.
# Put .gpu/lmscore there, linking the build root to this copy when it is elsewhere and absent.
cli_ready() {
    if [ -z "$BIN_PATH" ] || [ -z "$BUILD_ROOT" ]; then echo "no BUILD_ROOT / BIN_PATH in $BIN/manifest"; return 1; fi
    if [ ! -e "$BUILD_ROOT" ]; then
        if mkdir -p "$(dirname "$BUILD_ROOT")" 2>/dev/null && ln -s "$ROOT" "$BUILD_ROOT" 2>/dev/null; then
            CREATED_LINK=$BUILD_ROOT
            echo "linked $BUILD_ROOT -> $ROOT"
        else
            echo "cannot create $BUILD_ROOT (a link to $ROOT) for the compiled-in paths"
            return 1
        fi
    fi
    if [ "$(cd "$BUILD_ROOT" && pwd -P)" != "$(pwd -P)" ]; then
        echo "$BUILD_ROOT exists and is not this tree ($ROOT): its tests/fixtures and CLI would be used, not these"
        return 1
    fi
    if [ ! -x "$BIN_PATH" ]; then
        if ! { mkdir -p "$(dirname "$BIN_PATH")" && cp "$BIN/lmscore" "$BIN_PATH"; }; then echo "cannot place $BIN_PATH"; return 1; fi
        echo "placed $BIN/lmscore at $BIN_PATH"
    else
        echo "using the existing $BIN_PATH"
    fi
}

test_stage() { # name default-timeout args...
    local name=$1 def=$2
    shift 2
    selected "$name" || return 0
    if [ ! -x "$BIN/$name" ]; then
        record "$name" "NOT RUN" 0 "$BIN/$name is missing (run scripts/gpu-pack.sh on the build machine)"
        return 0
    fi
    run_stage "$name" "$TESTS_LOG" "$(stage_timeout "$name" "$def")" "$BIN/$name" "$@" || return 0
    classify_test "$name"
}

# ----------------------------------------------------------------------------------------- tests --
test_stage kernels_compile 120 --nocapture --test-threads 1
# shellcheck disable=SC2086
test_stage cuda_parity 240 ${GPU_RUN_PARITY_FILTER:-}
for t in cuda_cli cuda_profile; do
    selected "$t" || continue
    if [ ! -x "$BIN/$t" ] || [ ! -x "$BIN/lmscore" ]; then
        record "$t" "NOT RUN" 0 "$BIN/$t or $BIN/lmscore is missing"
        continue
    fi
    # not in $(...): cli_ready may set CREATED_LINK, which finish() removes
    if cli_ready >"$WORK/cli_ready" 2>&1; then
        echo "$t: $(cat "$WORK/cli_ready")" >>"$TESTS_LOG"
        test_stage "$t" 90
    else
        record "$t" "NOT RUN" 0 "$(cat "$WORK/cli_ready")"
    fi
done
test_stage cuda_faults 60

# --------------------------------------------------------------------------------------- benches --
# Criterion's lines "<id>\n  time: [..]\n  thrpt: [..]" (or "<id>  time: [..]") -> one line each.
bench_results() { # log
    awk '
        /^Benchmarking / { next }
        /time:[ \t]*\[/ { id = $0; sub(/[ \t]*time:.*/, "", id); if (id == "") id = last; t = $0; sub(/.*time:[ \t]*/, "", t); cur = id; printf "%s  time %s\n", cur, t; next }
        /thrpt:[ \t]*\[/ { t = $0; sub(/.*thrpt:[ \t]*/, "", t); printf "%s  thrpt %s\n", cur, t; next }
        /^(device:|end_to_end\/.* tokens\/s|attention\/.*TFLOP)/ { print; next }
        /^[^ \t]/ { last = $0 }
    ' "$1"
}

bench_stage() { # name default-timeout groups: LMSCORE_BENCH_ONLY=groups (a comma list), so the bench sets up
    # and measures only those groups (criterion's own filter would still set up every group and run the
    # printed extras)
    local name=$1 def=$2 groups=$3
    selected "$name" || return 0
    if [ ! -x "$BIN/kernels_bench" ]; then
        record "$name" "NOT RUN" 0 "$BIN/kernels_bench is missing"
        return 0
    fi
    # shellcheck disable=SC2086
    run_stage "$name" "$BENCH_LOG" "$(stage_timeout "$name" "$def")" env LMSCORE_BENCH_ONLY="$groups" "$BIN/kernels_bench" --bench \
        ${GPU_RUN_BENCH_ARGS:---warm-up-time 0.5 --measurement-time 2 --sample-size 10 --noplot} || return 0
    { echo "[$name]"; bench_results "$STAGE_LOG"; } >>"$BENCH_RESULTS"
    local n status
    n=$(grep -c 'time:[[:space:]]*\[' "$STAGE_LOG")
    case $STAGE_RC in
        0) status=PASS; grep -q '^SKIPPED' "$STAGE_LOG" && status="FAIL(skipped)" ;;
        124 | 137) status=TIMEOUT ;;
        *) status="FAIL(rc=$STAGE_RC)" ;;
    esac
    record "$name" "$status" "$STAGE_SECS" "$n benchmark(s) measured, groups $groups"
}

# The issue's figures first: end to end (fraction of the FLOP limit), attention (TFLOP/s), then the
# fusions' before / after pairs; the other groups last, with what time is left.
bench_stage bench_end_to_end 150 end_to_end
bench_stage bench_attention 150 attention
bench_stage bench_fusions 100 parallel_residual,qkv_projection

# ------------------------------------------------------------------------------------ sanitizers --
# A few cuda_parity tests under memcheck and racecheck: the tensor-core attention (attention_tc), the
# f32 attention, the fused log-softmax gather and parallel_norms. One process per (test, tool), so one
# slow case does not hide the rest.
SAN_TESTS=${GPU_RUN_SANITIZE_TESTS:-tensor_core_attention_matches_the_f32_kernel attention_matches_cpu logsoftmax_gather_matches_cpu parallel_norms_and_linear_accumulate_match_cpu}
SAN_UNSUPPORTED=
if [ -z "$SANITIZER" ] && { selected memcheck:x || selected racecheck:x; }; then
    record "memcheck,racecheck" "NOT RUN" 0 "compute-sanitizer not found (GPU_RUN_SANITIZER, PATH, /usr/local/cuda*/bin): $SAN_TESTS"
    SAN_TESTS=
fi
for t in $SAN_TESTS; do
    for tool in memcheck racecheck; do
        name=$tool:$t
        selected "$name" || continue
        if [ -z "$SANITIZER" ]; then
            record "$name" "NOT RUN" 0 "compute-sanitizer not found"
            continue
        fi
        if [ -n "$SAN_UNSUPPORTED" ]; then
            record "$name" "UNSUPPORTED" 0 "$SAN_UNSUPPORTED"
            continue
        fi
        [ -x "$BIN/cuda_parity" ] || { record "$name" "NOT RUN" 0 "$BIN/cuda_parity is missing"; continue; }
        run_stage "$name" "$SAN_LOG" "$(stage_timeout "$tool" 45)" "$SANITIZER" --tool "$tool" \
            --error-exitcode 97 --print-limit 50 \
            "$BIN/cuda_parity" --exact "$t" --test-threads 1 || continue
        res=$(libtest_result "$STAGE_LOG")
        summary=$(grep -m1 -E '^========= (ERROR SUMMARY|RACECHECK SUMMARY)' "$STAGE_LOG" | sed 's/^========= //')
        detail="${summary:-no sanitizer summary}; ${res:-no libtest result}"
        if grep -q -E 'Device not supported|not supported on this (device|platform)' "$STAGE_LOG"; then
            SAN_UNSUPPORTED="compute-sanitizer refused the device ($(grep -m1 -E 'not supported' "$STAGE_LOG" | cut -c1-120))"
            record "$name" "UNSUPPORTED" "$STAGE_SECS" "$SAN_UNSUPPORTED"
            continue
        fi
        case $STAGE_RC in
            0) if grep -q '^running 0 tests' "$STAGE_LOG"; then status="NO TESTS"; else status=PASS; fi ;;
            97) status="SANITIZER ERRORS" ;;
            124 | 137) status=TIMEOUT ;;
            *) status="FAIL(rc=$STAGE_RC)" ;;
        esac
        record "$name" "$status" "$STAGE_SECS" "$detail"
    done
done

# ------------------------------------------------------------------------- remaining bench groups --
# Every other group named in benches/kernels.rs, with whatever time is left.
if selected bench_other; then
    groups=$(grep -o 'benchmark_group(format!("[A-Za-z0-9_]*/' "$ROOT/benches/kernels.rs" 2>/dev/null |
        sed 's/.*"//; s|/$||' | grep -v -x -E 'attention|end_to_end|parallel_residual|qkv_projection' | sort -u | paste -sd, -)
    if [ -n "$groups" ]; then
        bench_stage bench_other 600 "$groups"
    fi
fi

finish
[ "$FAILED" -eq 0 ]
