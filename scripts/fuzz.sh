#!/usr/bin/env bash
# Builds the libFuzzer harnesses in Fuzz/ (release, -sanitize=fuzzer,address) and runs each
# target for SECONDS (default 10) from the committed seeds in fixtures/fuzz/<target>/.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     targets: header file adapter_config op_config
#                                             shard_index key_map gguf (default: all)
#   scripts/fuzz.sh --seed                    re-gather seeds from fixtures/ and replace
#                                             fixtures/fuzz/ with their coverage-minimal subset
#                                             (files named regression-* are kept as they are)
#   scripts/fuzz.sh --build                   build only
#
# New interesting inputs go to Fuzz/.build/corpus/<target>/ (not committed); crashes, leaks
# and timeouts to Fuzz/.build/findings/<target>/. Extra libFuzzer flags: FUZZ_ARGS="-runs=N".
# FUZZ_CONFIG=debug builds in half the time and keeps Swift's debug bounds checks on unsafe
# buffers, at under half the speed (CI uses it); the default is release.
# Exits 1 if any target found something.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
all_targets=(header file adapter_config op_config shard_index key_map gguf)
build_dir="$root/Fuzz/.build"
config=${FUZZ_CONFIG:-release}
bin="$build_dir/$config"

build() {
  local start=$SECONDS
  # swiftc keeps only the last -sanitize= it is given, and SwiftPM passes one per
  # --sanitize; the combined -Xswiftc flag comes last, so Swift code gets both coverage and
  # ASan (clang, for the C targets, adds them up itself).
  if [ "$(basename "$root" | tr '[:upper:]' '[:lower:]')" = fuzz ]; then
    # SwiftPM names packages after their directories: this checkout and Fuzz/ would clash.
    echo "fuzz: the repository directory must not be named 'fuzz' (SwiftPM package name clash)" >&2
    exit 2
  fi
  swift build --package-path Fuzz -c "$config" --sanitize=fuzzer --sanitize=address \
    -Xswiftc -sanitize=fuzzer,address 2>&1 | grep -v "Cannot export local symbol '__asan" | tail -5
  echo "fuzz: $config build took $((SECONDS - start)) s"
}

# Largest input libFuzzer may make: headers need room for a few tensors, configs less.
max_len() {
  case "$1" in
    header|file|gguf) echo 65536 ;;
    *) echo 16384 ;;
  esac
}

run_target() {
  local target=$1 seconds=$2
  local corpus="$build_dir/corpus/$target" findings="$build_dir/findings/$target"
  mkdir -p "$corpus" "$findings" "fixtures/fuzz/$target"
  local log="$build_dir/fuzz-$target.log"
  local dict=()
  [ "$target" = file ] || [ "$target" = gguf ] || dict=(-dict="$root/Fuzz/json.dict")
  # Leaks are reported at exit and per input (-detect_leaks); a slow input or a runaway
  # allocation is a finding too.
  set +e
  # When a check traps, the Swift backtracer reads memory ASan has poisoned and ASan reports
  # that instead of the trap, so it is off: libFuzzer prints the real stack.
  SWIFT_BACKTRACE=enable=no ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1:${ASAN_OPTIONS:-}" \
    "$bin/fuzz_$target" "$corpus" "fixtures/fuzz/$target" "${dict[@]}" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
    -max_len="$(max_len "$target")" -detect_leaks=1 -print_final_stats=1 \
    -artifact_prefix="$findings/" ${FUZZ_ARGS:-} >"$log" 2>&1
  local status=$?
  set -e
  local execs rate cov
  execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')
  rate=$(grep -E '^stat::average_exec_per_sec' "$log" | awk '{print $2}')
  cov=$(grep -E '#[0-9]+.*cov:' "$log" | tail -n 1 | sed -E 's/.*cov: ([0-9]+) ft: ([0-9]+) corp: ([0-9]+\/[^ ]+).*/cov \1, ft \2, corpus \3/')
  echo "fuzz: $target: ${execs:-?} executions, ${rate:-?} exec/s, ${cov:-no coverage line}, exit $status"
  if [ "$status" -ne 0 ]; then
    echo "fuzz: $target FOUND A PROBLEM (log: $log, artifacts: $findings/):"
    grep -E 'ERROR: |Fatal error|SUMMARY|Test unit written' "$log" | head -n 10 | sed 's/^/  /'
    return 1
  fi
}

seed() {
  local raw
  raw=$(mktemp -d /tmp/opconvert-fuzz-seeds.XXXXXX)
  python3 Fuzz/gather_seeds.py "$raw"
  for target in "${all_targets[@]}"; do
    mkdir -p "fixtures/fuzz/$target"
    find "fixtures/fuzz/$target" -type f ! -name 'regression-*' -delete
    "$bin/fuzz_$target" -merge=1 -max_len="$(max_len "$target")" "fixtures/fuzz/$target" "$raw/$target" \
      >"$build_dir/merge-$target.log" 2>&1
    echo "fuzz: $target: $(ls "$raw/$target" | wc -l) raw seeds -> $(ls "fixtures/fuzz/$target" | wc -l) kept"
  done
  rm -rf "$raw"
}

case "${1:-}" in
  --build) build; exit 0 ;;
  --seed) build; seed; exit 0 ;;
  -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac

seconds=${1:-10}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")
build
failed=0
start=$SECONDS
for target in "${targets[@]}"; do
  run_target "$target" "$seconds" || failed=1
done
echo "fuzz: ran ${#targets[@]} target(s) in $((SECONDS - start)) s"
exit "$failed"
