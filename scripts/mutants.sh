#!/usr/bin/env bash
# Mutation testing of the pure core with cargo-mutants: the shared core
# crate, the watchdog's log parser and detector, the webhook's pod mutation
# and review handling (the files are listed in .cargo/mutants.toml). Each
# mutant (one small change to that code) must make a test fail; the tests
# run per mutant are each package's fast ones that need no cluster, no
# network and no binary.
#
#   scripts/mutants.sh                 all three packages
#   scripts/mutants.sh watchdog        or only some: watchdog | webhook | core
#
# CPU heavy (about 850 mutants, 5 to 20 s each on 2 cores: two to three
# hours): one mutant at a time unless MUTANTS_JOBS says otherwise; a test run
# is cut off after MUTANTS_TIMEOUT seconds (default 120, several times the
# slowest unmutated run). MUTANTS_ARGS adds flags to cargo-mutants, e.g.
# `--shard 0/8 --sharding round-robin` for every 8th mutant only (`--shard`
# alone takes a contiguous slice), or `--iterate` to skip the mutants an
# earlier run into the same MUTANTS_OUT caught. cargo-mutants
# (MUTANTS_VERSION, pinned) is installed from crates.io on first use into
# the tools cache (ARC_WATCHDOG_CACHE, default ~/.cache/arc-watchdog).
# Results: $MUTANTS_OUT/<package>/mutants.out (default target/mutants);
# missed.txt lists the mutants no test caught. Exits 0 when every mutant was
# caught (or did not build), else with cargo-mutants' status (2: some
# missed, 3: some timed out).
set -euo pipefail
cd "$(dirname "$0")/.."

version="${MUTANTS_VERSION:-27.0.0}"
cache="${ARC_WATCHDOG_CACHE:-$HOME/.cache/arc-watchdog}"
root="$cache/cargo-mutants-$version"
jobs="${MUTANTS_JOBS:-1}"
timeout="${MUTANTS_TIMEOUT:-120}"
read -r -a extra <<<"${MUTANTS_ARGS:-}"
out="${MUTANTS_OUT:-target/mutants}"
mkdir -p "$out"

if ! "$root/bin/cargo-mutants" mutants --version >/dev/null 2>&1; then
    echo "==> installing cargo-mutants $version into $root (once: a few minutes)"
    cargo install --locked --version "$version" --root "$root" cargo-mutants
fi
export PATH="$root/bin:$PATH"
# Each mutant is built in cargo-mutants' own copy of the tree, into that
# copy's target directory. A CARGO_TARGET_DIR shared with other cargo
# commands would let them overwrite a mutant's test binaries (or the
# mutant theirs) between its build and its test run: wrong outcomes.
unset CARGO_TARGET_DIR

# Package, then the cargo arguments selecting its fast tests (one word
# each). They go to the build of every mutant as well as to the test run:
# as arguments of the test run only, each build also compiled the slow
# cluster tests that never run, about as long again as the tests that do.
declare -A tests=(
    [watchdog]="arc-watchdog --lib --test=parser --test=parser_props --test=detector --test=detector_props"
    [webhook]="arc-watchdog-webhook --lib --test=golden --test=robustness --test=router"
    [core]="arc-watchdog-core --lib --test=detector --test=golden --test=router"
)
# Packages whose tests run against a package's mutants, when not only its
# own: most of the core (Event reasons, causes, thresholds) is pinned by the
# detector's and the webhook's tests, not by its own unit tests.
declare -A test_packages=(
    [core]="arc-watchdog-core arc-watchdog arc-watchdog-webhook"
)
which=("$@")
[ ${#which[@]} -gt 0 ] || which=(core watchdog webhook)

status=0
for name in "${which[@]}"; do
    [ -n "${tests[$name]:-}" ] || { echo "unknown package set '$name' (watchdog, webhook or core)" >&2; exit 1; }
    read -r package args <<<"${tests[$name]}"
    test_flags=()
    baseline=()
    if [ -n "${test_packages[$name]:-}" ]; then
        # cargo-mutants builds and tests its unmutated baseline with the
        # mutated package alone, not the --test-package ones, so a test
        # target of another package fails that build. The baseline is run
        # here instead, with every test package, and skipped there (the
        # absolute --timeout bounds each mutant's test run without it).
        cargo_packages=()
        for p in ${test_packages[$name]}; do
            test_flags+=(--test-package "$p")
            cargo_packages+=(-p "$p")
        done
        echo "==> unmutated baseline of $package: cargo test ${cargo_packages[*]} $args"
        # shellcheck disable=SC2086 # $args is a list of cargo arguments
        cargo test "${cargo_packages[@]}" $args --quiet >"$out/$name.baseline.log" 2>&1 || {
            echo "the unmutated tests fail, so no mutant can be judged; see $out/$name.baseline.log" >&2
            exit 4
        }
        baseline=(--baseline=skip)
    fi
    for a in $args; do test_flags+=("--cargo-arg=$a"); done
    echo "==> mutants of $package (tests: $args)"
    start=$(date +%s)
    mkdir -p "$out/$name"
    rc=0
    cargo mutants --package "$package" "${test_flags[@]}" ${baseline[@]+"${baseline[@]}"} --jobs "$jobs" \
        --timeout "$timeout" --output "$out/$name" ${extra[@]+"${extra[@]}"} || rc=$?
    echo "==> $package: cargo-mutants exited $rc after $(( $(date +%s) - start )) s; results in $out/$name/mutants.out"
    for kind in caught missed timeout unviable; do
        file="$out/$name/mutants.out/$kind.txt"
        [ -f "$file" ] && echo "    $kind: $(wc -l <"$file")"
    done
    if [ -s "$out/$name/mutants.out/missed.txt" ]; then
        echo "    missed:"
        sed 's/^/      /' "$out/$name/mutants.out/missed.txt"
    fi
    [ "$rc" -eq 0 ] || status=$rc
done
exit "$status"
