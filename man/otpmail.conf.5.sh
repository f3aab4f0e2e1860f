#!/bin/sh
# Generates otpmail.conf(5) from the sample configuration: the section
# titles ("## ...") become .SH, each "# key = default" an entry, and the
# comment lines above it its description.
conf=$1
version=$2
cat <<HEAD
.TH OTPMAIL.CONF 5 "" "otpmail $version" "File Formats"
.SH NAME
otpmail.conf \- configuration file of otpmaild
.SH SYNOPSIS
.B /etc/otpmail/otpmail.conf
.SH DESCRIPTION
One \fIkey\fR = \fIvalue\fR per line; \fB#\fR starts a comment.
Unknown keys and bad values are errors naming the file and line.
Durations take a unit (s, m, h, d; seconds if none); sizes take k, M or G;
lists are separated by commas or spaces. Keys marked (repeatable) may be given
more than once. Check a file with \fBotpmaild \-\-check\-config \-c\fR \fIfile\fR,
which prints the effective configuration.
Without a configuration file otpmaild runs on the defaults below, in sandbox
mode, with its state in ./otpmail-state.
HEAD
awk '
/^## / { sub(/^## /, ""); print ".SH \"" toupper($0) "\""; desc = ""; next }
/^# [a-z_0-9]+ =/ {
	line = substr($0, 3)
	eq = index(line, " =")
	key = substr(line, 1, eq - 1)
	def = substr(line, eq + 3)
	print ".TP"
	gsub(/\\/, "\\\\", def)
	if (def == "") print "\\fB" key "\\fR (default: empty)"
	else print "\\fB" key "\\fR = " def
	if (desc != "") print desc
	desc = ""
	next
}
/^# / && seen_title { d = substr($0, 3); gsub(/\\/, "\\\\", d); desc = (desc == "" ? d : desc "\n" d); next }
/^#$/ { next }
/^$/ { desc = ""; seen_title = 1; next }
' "$conf"
cat <<TAIL
.SH FILES
.TP
.I <state_dir>/control.sock
the control socket
.TP
.I <state_dir>/spool
the message queue
.TP
.I <state_dir>/db
the Berkeley DB environment of the one-time codes
.SH SEE ALSO
.BR otpmaild (8),
.BR otpmailctl (8),
.BR otpmail-sendmail (8)
TAIL
