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
set -u
top_builddir=${top_builddir:-$(pwd)}
top_srcdir=${top_srcdir:-$(cd "$(dirname "$0")/.." && pwd)}
export top_builddir top_srcdir
logdir=${VG_LOGDIR:-$top_builddir/valgrind-logs}
mkdir -p "$logdir"
rm -f "$logdir"/*.log
command -v valgrind >/dev/null || { echo "valgrind not installed"; exit 77; }

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
fail=0
for t in $tests; do
	t=${t%.py}
	OTPMAIL_WRAPPER="valgrind --tool=memcheck --leak-check=full \
--errors-for-leak-kinds=definite --show-leak-kinds=definite \
--suppressions=$top_srcdir/tests/valgrind.supp --num-callers=30 \
--log-file=$logdir/$t.%p.log"
	export OTPMAIL_WRAPPER
	t0=$(date +%s)
	if /usr/bin/python3 "$top_srcdir/tests/integration/$t.py" >"$logdir/$t.tap" 2>&1; then
		echo "ok   $t ($(counts "$logdir/$t.tap"), $(($(date +%s) - t0)) s)"
	else
		echo "FAIL $t ($(counts "$logdir/$t.tap"), $(($(date +%s) - t0)) s; see $logdir/$t.tap)"
		fail=1
	fi
done
nlogs=0; nkilled=0; leaks=0; errs=0
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
    "($nkilled killed runs: errors only)"
[ "$leaks" -eq 0 ] && [ "$errs" -eq 0 ] && [ "$fail" -eq 0 ]
