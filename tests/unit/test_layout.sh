#!/bin/sh
# test_layout.sh - the source layout's rules (README "Source layout"), as a
# TAP test: a file includes another folder's header only through that
# folder's interface header, and store/, queue/ and dkim/ never include each
# other or agent/.
srcdir=${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}
cd "$srcdir" || exit 1

# The one header of each agent/ folder that other folders may include.
iface() {
	case $1 in
	core) echo agent/core/otpmaild.h ;;
	control) echo agent/control/control.h ;;
	mail) echo agent/mail/mail.h ;;
	delivery) echo agent/delivery/delivery.h ;;
	events) echo agent/events/events.h ;;
	*) echo "" ;;
	esac
}

n=0; bad=0
out=$(mktemp); trap 'rm -f "$out"' EXIT
# file:header pairs of every quoted include of the tree's own headers
grep -rn -o -E '^#include "(agent|store|queue|dkim)/[^"]+"' \
    agent store queue dkim --include='*.c' --include='*.h' |
    sed -E 's/^([^:]+):[0-9]+:#include "([^"]+)"/\1 \2/' >"$out"

# 1. agent/: another folder's header only through its interface header.
for dir in agent/*/; do
	from=$(basename "$dir")
	n=$((n + 1))
	v=$(awk -v f="agent/$from/" '
	    index($1, f) == 1 && $2 ~ /^agent\// {
		split($2, p, "/"); if (p[2] != substr(f, 7, length(f) - 7)) print
	    }' "$out" | while read -r file hdr; do
		to=$(echo "$hdr" | cut -d/ -f2)
		[ "$hdr" = "$(iface "$to")" ] || echo "$file includes $hdr"
	    done)
	if [ -z "$v" ]; then
		echo "ok $n - agent/$from/ includes other folders only through their interface headers"
	else
		echo "not ok $n - agent/$from/ includes another folder's internal header"
		echo "$v" | sed 's/^/# /'
		bad=1
	fi
done

# 2. every agent/ folder with a header has its interface header, and that
#    header opens with a comment saying what the folder is for.
for from in core control mail delivery events; do
	n=$((n + 1))
	h=$(iface $from)
	if [ -f "$h" ] && head -3 "$h" | grep -q "interface of agent/$from/"; then
		echo "ok $n - $h is the interface of agent/$from/ and says so"
	else
		echo "not ok $n - $h missing or without its folder comment"; bad=1
	fi
done

# 3. the libraries stay independent of each other and of agent/.
for lib in store queue dkim; do
	n=$((n + 1))
	v=$(awk -v l="$lib/" 'index($1, l) == 1 && index($2, l) != 1' "$out")
	if [ -z "$v" ]; then
		echo "ok $n - $lib/ includes no other folder's header"
	else
		echo "not ok $n - $lib/ includes another folder's header"
		echo "$v" | sed 's/^/# /'; bad=1
	fi
done
echo "1..$n"
exit $bad
