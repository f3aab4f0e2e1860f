#!/bin/bash
# tests/fuzz/run.sh - builds the libFuzzer targets of tests/fuzz/ with clang
# (ASan + UBSan, straight from the sources: the main build uses gcc) and
# runs each for a bounded time on its seed corpus, printing TAP:
#   ok N - fuzz <target>: X execs (Y/s), 0 crashes
#
#   tests/fuzz/run.sh [-t SECONDS] [target ...]
#
# SECONDS per target: -t, else $FUZZ_SECONDS, else 15 under `make check`
# (top_builddir set) and 60 by hand.  Work files (objects, binaries, the
# growing corpus, crash artifacts, logs) go to $FUZZ_WORK, default
# <builddir>/tests/fuzz/work.  A target that crashes, leaks or trips a
# sanitizer is "not ok" with its reproducer path; the reproducers kept in
# tests/fuzz/crashes/<target>-* are replayed first as regression tests.
# Longer runs: see tests/fuzz/README.
set -u

srcdir=${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}
builddir=${top_builddir:-$srcdir}
if [ -n "${top_builddir:-}" ]; then secs=${FUZZ_SECONDS:-15}; else secs=${FUZZ_SECONDS:-60}; fi
while getopts t: opt; do
	case $opt in
	t) secs=$OPTARG ;;
	*) echo "usage: $0 [-t SECONDS] [target ...]" >&2; exit 2 ;;
	esac
done
shift $((OPTIND - 1))
all_targets="addr header config spool_env spool_file smtp ctl"
targets=${*:-$all_targets}
work=${FUZZ_WORK:-$builddir/tests/fuzz/work}
CC=${FUZZ_CC:-clang}
jobs=${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 2)}

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
LIBS="-ljansson -letpan -lopendkim -lssl -lcrypto -ldb-5.3 -lunbound -lcurl -lz -lpthread -lm"

# Sources each target needs (ctl needs the whole daemon but main.c).
sources() {
	case $1 in
	addr) echo agent/mail/address.c ;;
	header) echo agent/mail/message.c ;;
	config) echo agent/core/config.c dkim/keys.c ;;
	spool_env|spool_file) (cd "$srcdir" && ls queue/*.c | grep -v bench) ;;
	smtp) echo agent/delivery/tlsstream.c agent/mail/address.c ;;
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
	# shellcheck disable=SC2086
	$CC $CFLAGS -fsanitize=fuzzer $work/obj/tests_fuzz_fuzz_$t.c.o $objs \
	    $LIBS -o "$work/bin/fuzz_$t"
}
export -f compile
export CC CFLAGS srcdir work

n=0
failed=0
for t in $targets; do
	n=$((n + 1))
	log=$work/log/$t.log
	if ! build "$t" >"$work/log/$t.build" 2>&1; then
		echo "not ok $n - fuzz $t: build failed"
		sed 's/^/#   /' "$work/log/$t.build" | tail -30
		failed=$((failed + 1))
		continue
	fi
	bin=$work/bin/fuzz_$t
	# Known reproducers first: each must run clean now.
	bad=""
	for r in "$srcdir"/tests/fuzz/crashes/"$t"-*; do
		[ -f "$r" ] || continue
		if ! "$bin" "$r" >"$log.repro" 2>&1; then
			bad="$bad $(basename "$r")"
		fi
	done
	mkdir -p "$work/corpus/$t"
	rm -f "$work/crashes/$t"-*
	start=$(date +%s)
	"$bin" -max_total_time="$secs" -print_final_stats=1 -timeout=10 \
	    -rss_limit_mb=2048 -max_len=8192 \
	    -artifact_prefix="$work/crashes/$t-" \
	    "$work/corpus/$t" "$srcdir/tests/fuzz/corpus/$t" >"$log" 2>&1
	rc=$?
	end=$(date +%s)
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	execs=${execs:-0}
	el=$((end - start)); [ "$el" -gt 0 ] || el=1
	ncrash=$(find "$work/crashes" -name "$t-*" -type f | wc -l)
	if [ "$rc" -eq 0 ] && [ "$ncrash" -eq 0 ] && [ -z "$bad" ] && [ "$execs" -gt 0 ]; then
		echo "ok $n - fuzz $t: $execs execs ($((execs / el))/s), 0 crashes"
	else
		failed=$((failed + 1))
		echo "not ok $n - fuzz $t: $execs execs, $ncrash crashes, exit $rc${bad:+, reproducers still failing:$bad}"
		find "$work/crashes" -name "$t-*" -type f | sed 's/^/#   reproducer: /'
		grep -m1 -A25 -e 'ERROR: ' -e 'runtime error' -e 'deadly signal' "$log" |
		    sed 's/^/#   /'
	fi
done
echo "1..$n"
[ "$failed" -eq 0 ]
