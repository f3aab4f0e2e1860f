#!/bin/bash
# tests/fuzz/run.sh - builds the libFuzzer targets of tests/fuzz/ with clang
# (ASan + UBSan, straight from the sources: the main build uses gcc) and
# runs each on its corpus (tests/fuzz/corpus/<target>, kept in the tree),
# two at a time, printing TAP:
#   ok N - fuzz <target>: X execs (Y/s) in S s, cov C, saturated, 0 crashes
#
#   tests/fuzz/run.sh [-t SECONDS] [target ...]
#
# Each target runs SECONDS (-t, else $FUZZ_SECONDS, else 45), then on in
# rounds of 15 s while the last round still found new coverage, up to
# $FUZZ_MAX_SECONDS (default SECONDS + 15: 60 s in all by default);
# "saturated" says the last round found nothing new.  $FUZZ_PARALLEL targets at a time (default 2).  Work
# files (objects, binaries, the growing corpus, crash artifacts, logs) go to
# $FUZZ_WORK, default <builddir>/tests/fuzz/work.  A target that crashes,
# times out (10 s on one input), leaks, runs out of memory or trips a
# sanitizer is "not ok" with its reproducer path; the reproducers kept in
# tests/fuzz/crashes/<target>-* are replayed first as regression tests.
# Longer runs, growing the corpus: see tests/fuzz/README.
set -u

srcdir=${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}
builddir=${top_builddir:-$srcdir}
secs=${FUZZ_SECONDS:-45}
while getopts t: opt; do
	case $opt in
	t) secs=$OPTARG ;;
	*) echo "usage: $0 [-t SECONDS] [target ...]" >&2; exit 2 ;;
	esac
done
shift $((OPTIND - 1))
all_targets="addr header config spool_env spool_file segment smtp ctl dlproto"
targets=${*:-$all_targets}
work=${FUZZ_WORK:-$builddir/tests/fuzz/work}
CC=${FUZZ_CC:-clang}
jobs=${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 2)}
maxsecs=${FUZZ_MAX_SECONDS:-$((secs + 15))}	# at least one 15 s round more
parallel=${FUZZ_PARALLEL:-2}
# seconds one input may take; raise it for a niced run on a busy machine,
# where a starved process would time out on wall time alone
timeout=${FUZZ_TIMEOUT:-10}

if ! command -v "$CC" >/dev/null 2>&1; then
	echo "1..0 # SKIP $CC not installed (.ci/deps installs clang)"
	exit 0
fi
mkdir -p "$work/obj" "$work/bin" "$work/crashes" "$work/log" || exit 1

version=$(sed -n 's/^AC_INIT(\[[^]]*\], *\[\([^]]*\)\].*/\1/p' "$srcdir/configure.ac" | head -1)
CFLAGS="-g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined
	-fno-sanitize-recover=undefined -Wall -Wno-unused-parameter -pthread
	-I$srcdir -D_GNU_SOURCE -DPACKAGE_VERSION=\"${version:-0}\"
	-DPACKAGE_STRING=\"otpmail\" -DPACKAGE=\"otpmail\"
	-DSYSCONFDIR=\"/etc\" -DDATADIR=\"$srcdir/etc\" -DSRCDIR=\"$srcdir\"
	-I/usr/include/opendkim"
LIBS="-ljansson -letpan -lopendkim -lssl -lcrypto -ldb-5.3 -lunbound -lidn2 -lunistring -lcurl -lz -lseccomp -lpthread -lm"

# Sources each target needs (ctl needs the whole daemon but main.c).
sources() {
	case $1 in
	addr) echo agent/mail/address.c ;;
	header) echo agent/mail/message.c ;;
	config) echo agent/core/config.c agent/core/config_app.c dkim/keys.c ;;
	spool_env|spool_file|segment) (cd "$srcdir" && ls queue/*.c | grep -v bench) ;;
	smtp) echo agent/delivery/tlsstream.c agent/mail/address.c ;;
	dlproto) echo agent/delivery/dlproto.c ;;
	repl_wire) (cd "$srcdir" && ls store/*.c) ;;
	ctl) (cd "$srcdir" && ls agent/*/*.c store/*.c queue/*.c dkim/*.c |
		grep -v -e agent/core/main.c -e agent/tools/otpmailctl.c -e agent/tools/sendmail.c \
		    -e bench) ;;
	esac
}

# Compiles one source into $work/obj unless its object is newer than it
# and than every header of the tree.
compile() {
	local src=$1 obj
	obj=$work/obj/$(echo "$src" | tr / _).o
	if [ -f "$obj" ] && [ "$obj" -nt "$srcdir/$src" ] &&
	    [ -z "$(find "$srcdir/agent" "$srcdir/queue" "$srcdir/store" \
	    "$srcdir/dkim" -name '*.h' -newer "$obj" 2>/dev/null | head -1)" ]; then
		return 0
	fi
	# shellcheck disable=SC2086
	$CC $CFLAGS -fsanitize=fuzzer-no-link -c "$srcdir/$src" -o "$obj.tmp" &&
	    mv "$obj.tmp" "$obj"
}

build() {
	local t=$1 objs="" s
	for s in $(sources "$t"); do
		objs="$objs $work/obj/$(echo "$s" | tr / _).o"
	done
	# shellcheck disable=SC2086
	printf '%s\n' $(sources "$t") tests/fuzz/fuzz_$t.c |
	    xargs -P "$jobs" -I{} bash -c 'compile "$@"' _ {} || return 1
	# the daemon's built-in bounce rules: a C file make generates from
	# etc/bounce-rules (agent/Makefile.inc); made here the same way
	if [ "$t" = ctl ]; then
		{ echo '#include "agent/delivery/bounce.h"'
		  echo 'const char bounce_builtin_rules[] ='
		  sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/"/' -e 's/$/\\n"/' \
		      "$srcdir/etc/bounce-rules"
		  echo ';'; } >"$work/obj/bounce_builtin.c" &&
		    $CC $CFLAGS -c "$work/obj/bounce_builtin.c" -o "$work/obj/bounce_builtin.o" ||
		    return 1
		objs="$objs $work/obj/bounce_builtin.o"
	fi
	# shellcheck disable=SC2086
	$CC $CFLAGS -fsanitize=fuzzer $work/obj/tests_fuzz_fuzz_$t.c.o $objs \
	    $LIBS -o "$work/bin/fuzz_$t"
}
export -f compile
export CC CFLAGS srcdir work timeout

# One round of libFuzzer on target $1 for $2 seconds, log to $3.
round() {
	"$work/bin/fuzz_$1" -max_total_time="$2" -print_final_stats=1 -timeout="$timeout" -report_slow_units="$timeout" \
	    -rss_limit_mb=2048 -max_len=8192 -artifact_prefix="$work/crashes/$1-" \
	    "$work/corpus/$1" "$srcdir/tests/fuzz/corpus/$1" >"$3" 2>&1
}

# Fuzzes target $1 (test number $2); writes its TAP line(s) to
# $work/log/$1.tap.
fuzz() {
	local t=$1 n=$2 log=$work/log/$1.log bin=$work/bin/fuzz_$1 out=$work/log/$1.tap
	local bad="" r rc start el execs e k ncrash cov state new
	rm -f "$log".*
	# Known reproducers first: each must run clean now.
	for r in "$srcdir"/tests/fuzz/crashes/"$t"-*; do
		[ -f "$r" ] || continue
		"$bin" "$r" >"$log.repro" 2>&1 || bad="$bad $(basename "$r")"
	done
	mkdir -p "$work/corpus/$t"
	rm -f "$work/crashes/$t"-*
	start=$(date +%s)
	round "$t" "$secs" "$log.1"
	rc=$?
	k=1
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log.1" | tail -1)
	# on while the last round found new coverage
	new=1
	while [ "$rc" -eq 0 ] && [ $((secs + 15 * k)) -le "$maxsecs" ]; do
		k=$((k + 1))
		round "$t" 15 "$log.$k"
		rc=$?
		e=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log.$k" | tail -1)
		execs=$((${execs:-0} + ${e:-0}))
		new=$(grep -c '	NEW ' "$log.$k")
		[ "$new" -gt 0 ] || break
	done
	el=$(($(date +%s) - start)); [ "$el" -gt 0 ] || el=1
	cat "$log".[0-9]* >"$log"
	execs=${execs:-0}
	cov=$(grep -o 'DONE *cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
	state="saturated"
	[ "$k" -gt 1 ] && [ "$new" -gt 0 ] && state="still finding coverage"
	[ "$k" -eq 1 ] && state="saturation not checked (FUZZ_MAX_SECONDS)"
	ncrash=$(find "$work/crashes" -name "$t-*" -type f | wc -l)
	if [ "$rc" -eq 0 ] && [ "$ncrash" -eq 0 ] && [ -z "$bad" ] && [ "$execs" -gt 0 ]; then
		echo "ok $n - fuzz $t: $execs execs ($((execs / el))/s) in $el s, cov ${cov:-?}, $state, 0 crashes" >"$out"
	else
		{
		echo "not ok $n - fuzz $t: $execs execs, $ncrash crashes or timeouts, exit $rc${bad:+, reproducers still failing:$bad}"
		find "$work/crashes" -name "$t-*" -type f | sed 's/^/#   reproducer: /'
		grep -m1 -A25 -e 'ERROR: ' -e 'runtime error' -e 'deadly signal' "$log" |
		    sed 's/^/#   /'
		} >"$out"
	fi
}

n=0
failed=0
ready=""
for t in $targets; do
	n=$((n + 1))
	rm -f "$work/log/$t.tap"
	if ! build "$t" >"$work/log/$t.build" 2>&1; then
		echo "not ok $n - fuzz $t: build failed" >"$work/log/$t.tap"
		sed 's/^/#   /' "$work/log/$t.build" | tail -30 >>"$work/log/$t.tap"
		continue
	fi
	ready="$ready $n:$t"
done
# $parallel targets at a time (each fuzzer is one process)
for nt in $ready; do
	while [ "$(jobs -rp | wc -l)" -ge "$parallel" ]; do
		wait -n
	done
	fuzz "${nt#*:}" "${nt%%:*}" &
done
wait
for t in $targets; do
	if [ -s "$work/log/$t.tap" ]; then
		cat "$work/log/$t.tap"
		grep -q '^not ok' "$work/log/$t.tap" && failed=$((failed + 1))
	else
		echo "not ok - fuzz $t: no result"
		failed=$((failed + 1))
	fi
done
echo "1..$n"
[ "$failed" -eq 0 ]
