#!/bin/sh
# valgrind.sh - run integration tests with otpmaild under valgrind memcheck
# and report definite leaks and memory errors (tests/VALGRIND.md).
#
#   cd <builddir> && sh <srcdir>/tests/valgrind.sh [test_control test_otp ...]
#
# With no argument: every test of tests/integration/.  Each daemon the
# harness starts runs as `valgrind ... otpmaild -f -c ...` (harness.py reads
# OTPMAIL_WRAPPER); one log per daemon process in $VG_LOGDIR (default
# ./valgrind-logs).  Exit status 1 if any test failed, or any log shows a
# definite leak or a memory error; a daemon killed with kill -9 (test_crash)
# leaves a log without a summary: no leak check, only its errors count.  A
# daemon that aborts on purpose (OTPMAIL_FAULT: test_crash_points,
# test_crash_state) gets its summary: memcheck checks for leaks on SIGABRT,
# and the thread blocks of pthread_create (320 bytes each) show as "possibly
# lost", which is not counted.
#
# A test passes only if it passed at least one check: a script that only
# skipped is a FAIL.  Each skipped check is printed as automake prints it
# ("SKIP: tests/integration/test_x.py N - name # SKIP why") for
# ./bootstrap test to hold against tests/expected-skips.  Every daemon the
# harness starts is accounted for (harness.py writes OTPMAIL_RUNLOG): its
# log must exist and end with memcheck's summary, unless the harness killed
# it on purpose (kill -9); a run with neither is a failure.  The harness's
# timeouts are scaled by OTPMAIL_TIMEOUT_SCALE (default 10 here).
set -u
top_builddir=${top_builddir:-$(pwd)}
top_srcdir=${top_srcdir:-$(cd "$(dirname "$0")/.." && pwd)}
export top_builddir top_srcdir
logdir=${VG_LOGDIR:-$top_builddir/valgrind-logs}
mkdir -p "$logdir"
rm -f "$logdir"/*.log
command -v valgrind >/dev/null || { echo "FAIL valgrind not installed (.ci/deps installs it)"; exit 1; }
OTPMAIL_TIMEOUT_SCALE=${OTPMAIL_TIMEOUT_SCALE:-10}
export OTPMAIL_TIMEOUT_SCALE

tests=$*
if [ -z "$tests" ]; then
	tests=$(cd "$top_srcdir/tests/integration" && ls test_*.py | sed 's/\.py$//')
fi
# "N passed[, N skipped][, N failed]" from a TAP file
counts() {
	awk '/^ok / { if (/# SKIP/) s++; else p++ } /^not ok / { f++ }
	    END { printf "%d passed", p; if (s) printf ", %d skipped", s
	          if (f) printf ", %d failed", f }' "$1"
}
# number of checks passed (not skipped) in a TAP file
npassed() {
	awk '/^ok / && !/# SKIP/ { p++ } END { print p + 0 }' "$1"
}
# the skipped checks of test $1's TAP file $2, as automake's driver says them
skips() {
	sed -n -e "s|^ok \([0-9]*\) \(.*# SKIP.*\)|SKIP: tests/integration/$1.py \1 \2|p" \
	    -e "s|^1\.\.0 *\(# SKIP.*\)|SKIP: tests/integration/$1.py \1|p" "$2"
}
fail=0
for t in $tests; do
	t=${t%.py}
	OTPMAIL_WRAPPER="valgrind --tool=memcheck --leak-check=full \
--errors-for-leak-kinds=definite --show-leak-kinds=definite \
--suppressions=$top_srcdir/tests/valgrind.supp --num-callers=30 \
--log-file=$logdir/$t.%p.log"
	OTPMAIL_RUNLOG=$logdir/$t.runs
	export OTPMAIL_WRAPPER OTPMAIL_RUNLOG
	rm -f "$OTPMAIL_RUNLOG"
	t0=$(date +%s)
	if /usr/bin/python3 "$top_srcdir/tests/integration/$t.py" >"$logdir/$t.tap" 2>&1 &&
	    [ "$(npassed "$logdir/$t.tap")" -gt 0 ]; then
		echo "ok   $t ($(counts "$logdir/$t.tap"), $(($(date +%s) - t0)) s)"
		skips "$t" "$logdir/$t.tap"
	else
		echo "FAIL $t ($(counts "$logdir/$t.tap"), $(($(date +%s) - t0)) s; see $logdir/$t.tap)"
		fail=1
	fi
done
nlogs=0; nkilled=0; leaks=0; errs=0; lost=0
# every daemon run the harness started: a log with a summary, or killed on purpose
for r in "$logdir"/*.runs; do
	[ -e "$r" ] || continue
	t=$(basename "$r" .runs)
	for pid in $(sed -n 's/^start //p' "$r"); do
		f=$logdir/$t.$pid.log
		if [ ! -s "$f" ]; then
			lost=$((lost + 1)); echo "daemon run not counted: $t pid $pid: no valgrind log"
		elif ! grep -q "ERROR SUMMARY" "$f" && ! grep -qx "kill $pid" "$r"; then
			lost=$((lost + 1))
			echo "daemon run not counted: $t pid $pid: no memcheck summary and not killed on purpose ($f)"
		fi
	done
done
for f in "$logdir"/*.log; do
	[ -e "$f" ] || continue
	if ! grep -q "ERROR SUMMARY" "$f"; then
		# killed (kill -9): no leak check, but memcheck reports an error
		# when it happens, each with a stack ("   at 0x...")
		nkilled=$((nkilled + 1))
		if grep -q "^==[0-9]*==    at 0x" "$f"; then
			errs=$((errs + 1)); echo "memory errors: $f (killed)"
		fi
		continue
	fi
	nlogs=$((nlogs + 1))
	if grep -q "definitely lost: [1-9]" "$f"; then
		leaks=$((leaks + 1)); echo "definite leak: $f"
	fi
	if ! grep -q "ERROR SUMMARY: 0 errors" "$f"; then
		errs=$((errs + 1)); echo "memory errors: $f"
	fi
done
echo "valgrind: $nlogs daemon runs, $leaks with definite leaks, $errs with errors" \
    "($nkilled killed runs: errors only; $lost runs not counted)"
[ "$leaks" -eq 0 ] && [ "$errs" -eq 0 ] && [ "$lost" -eq 0 ] && [ "$fail" -eq 0 ]
