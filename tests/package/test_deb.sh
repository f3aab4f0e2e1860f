#!/bin/sh
# test_deb.sh DIR - installs otpmail_*.deb from DIR the way an admin does
# (apt install ./otpmail_*.deb), checks the system user, the state
# directory and maildrop, the conffile, the enabled-not-started unit, starts
# otpmaild as the unit would (systemctl when systemd runs, else its
# ExecStart as root; it drops to otpmail), pings it with otpmailctl, submits a
# message with otpmail-sendmail, then removes and purges the package and
# checks that nothing is left.  TAP output.  Needs root.
set -u
dir=$(cd "$1" && pwd)
n=0; failed=0
ok() { n=$((n + 1)); if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed + 1)); fi; }
check() { desc=$1; shift; if "$@" >/dev/null 2>&1; then ok 0 "$desc"; else ok 1 "$desc"; fi; }

deb=$(ls "$dir"/otpmail_*.deb | head -1)
DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "$deb" \
    >/tmp/otpmail-deb-install.log 2>&1
ok $? "apt install ./$(basename "$deb")"
check "otpmail system user" getent passwd otpmail
check "otpmail-smtp system user (the delivery process)" getent passwd otpmail-smtp
check "the shipped configuration drops to otpmail" grep -qx 'user = otpmail' \
    /etc/otpmail/otpmail.conf
check "the unit starts otpmaild as root (it drops itself)" sh -c \
    '! grep -q "^User=" /lib/systemd/system/otpmail.service'
check "state directory 0750 otpmail" sh -c '[ "$(stat -c %a:%U /var/lib/otpmail)" = 750:otpmail ]'
check "maildrop 3730" sh -c '[ "$(stat -c %a /var/lib/otpmail/maildrop)" = 3730 ]'
check "conffile /etc/otpmail/otpmail.conf" sh -c \
    'dpkg-query -W -f="\${Conffiles}" otpmail | grep -q /etc/otpmail/otpmail.conf'
check "the unit reads the installed configuration" grep -q \
    'ExecStart=/usr/sbin/otpmaild -f -c /etc/otpmail/otpmail.conf' \
    /lib/systemd/system/otpmail.service
check "the unit is enabled" test -L /etc/systemd/system/multi-user.target.wants/otpmail.service
check "bash completion installed" test -f /usr/share/bash-completion/completions/otpmailctl
check "otpmaild --check-config accepts the shipped file" \
    /usr/sbin/otpmaild --check-config -c /etc/otpmail/otpmail.conf
check "not started by the installation" sh -c '! pgrep -x otpmaild -u otpmail'

if [ -d /run/systemd/system ]; then
	systemctl start otpmail
	ok $? "systemctl start otpmail"
else
	# no systemd (a container): what the unit runs, as root
	/usr/sbin/otpmaild -f -c /etc/otpmail/otpmail.conf >/tmp/otpmail-deb-daemon.log 2>&1 &
	pid=$!
	ok 0 "otpmaild started as root (no systemd here)"
fi
i=0
while [ $i -lt 100 ] && ! otpmailctl -s /var/lib/otpmail/control.sock ping >/dev/null 2>&1; do
	sleep 0.1; i=$((i + 1))
done
check "otpmailctl ping" otpmailctl -s /var/lib/otpmail/control.sock ping
check "otpmaild runs as otpmail once started" sh -c \
    '[ "$(ps -o user= -p "$(cat /var/lib/otpmail/otpmaild.pid)")" = otpmail ]'
check "the state directory is otpmail's" sh -c \
    '[ "$(stat -c %U /var/lib/otpmail/control.sock)" = otpmail ]'
printf 'Subject: package test\n\nhello\n' | OTPMAIL_SOCKET= otpmail-sendmail -i -f app@example.com root@example.org
ok $? "otpmail-sendmail submits through the packaged daemon"
check "otpmailctl --version" otpmailctl --version
if [ -d /run/systemd/system ]; then
	systemctl stop otpmail
else
	kill "$pid"; wait "$pid"
fi
ok $? "otpmaild stops cleanly"

DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 remove -y -q otpmail >/tmp/otpmail-deb-remove.log 2>&1
ok $? "apt remove otpmail"
check "binaries gone after remove" sh -c '! test -e /usr/sbin/otpmaild'
check "conffile kept after remove" test -f /etc/otpmail/otpmail.conf
DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 purge -y -q otpmail >/tmp/otpmail-deb-purge.log 2>&1
ok $? "apt purge otpmail"
check "conffile gone after purge" sh -c '! test -e /etc/otpmail/otpmail.conf'
check "state directory gone after purge" sh -c '! test -e /var/lib/otpmail'
check "package gone" sh -c '! dpkg -s otpmail'
# otpmail-mta is not installed for real (it replaces the MTA other tests
# use): its links, and what apt would do, are checked instead.
mta=$(ls "$dir"/otpmail-mta_*.deb | head -1)
check "otpmail-mta links /usr/sbin/sendmail, mailq, newaliases" sh -c \
    "dpkg -c '$mta' | grep -q './usr/sbin/sendmail -> otpmail-sendmail' &&
     dpkg -c '$mta' | grep -q './usr/bin/mailq -> ../sbin/otpmail-sendmail' &&
     dpkg -c '$mta' | grep -q './usr/bin/newaliases -> ../sbin/otpmail-sendmail'"
check "otpmail-mta provides mail-transport-agent" sh -c \
    "dpkg-deb -f '$mta' Provides Conflicts | grep -c mail-transport-agent | grep -q 2"
if dpkg -s postfix >/dev/null 2>&1; then
	check "installing otpmail-mta would replace postfix (simulated)" sh -c \
	    "apt-get -s install '$deb' '$mta' 2>&1 | grep -q '^Remv postfix'"
fi
echo "1..$n"
[ "$failed" -eq 0 ]
