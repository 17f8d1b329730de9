#!/bin/sh
# tests/fuzz/run.sh TARGET... - run each libFuzzer target for FUZZ_S seconds,
# one after the other, one process each, and print one summary line per
# target:
#   fuzz: <target>: <seconds> s, <execs> execs (<rate>/s), cov <c> ft <f>, corpus <n>: ok|CRASH <artifact>
# Exit status 1 if any target crashed (or failed to start).
FUZZ_S=${FUZZ_S:-60}
B=${FUZZ_BUILD:-build-fuzz}
status=0
export UBSAN_OPTIONS="print_stacktrace=1:${UBSAN_OPTIONS:-}"
mkdir -p tests/fuzz/crashes
for t in "$@"; do
  bin=$B/fuzz_$t
  corpus=$B/corpus/$t
  mkdir -p "$corpus"
  dict=""
  [ -f tests/fuzz/$t.dict ] && dict="-dict=tests/fuzz/$t.dict"
  log=$B/$t.log
  start=$(date +%s)
  "$bin" -max_total_time="$FUZZ_S" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix=tests/fuzz/crashes/$t- $dict "$corpus" tests/fuzz/$t </dev/null >"$log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]* ft: [0-9]* corp: [0-9]*' "$log" | tail -1)
  art=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
  if [ $rc -eq 0 ]; then
    res=ok
  else
    res="CRASH ${art:-(see $log)}"
    status=1
  fi
  rm -f /dev/shm/kmfz-* 2>/dev/null  # objects of inputs that crashed
  echo "fuzz: $t: ${secs} s, ${execs:-?} execs (${rate:-?}/s), ${cov:-cov ?}: $res"
  if [ $rc -ne 0 ]; then
    grep -m1 -E '^==[0-9]+==ERROR|runtime error|oracle:|deadly signal' "$log" | sed 's/^/fuzz:   /'
  fi
done
exit $status
