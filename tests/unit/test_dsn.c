/*
 * test_dsn.c - RFC 3464 bounces: built from an envelope with delivered,
 * failed and expired recipients, then parsed back by Python's email
 * package (an independent MIME parser) as multipart/report with a
 * message/delivery-status part naming exactly the undelivered recipients.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "queue/queue_int.h"
#include "tests/unit/tap.h"

static const char orig[] =
    "DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=s1;\r\n"
    "\tb=AAAA\r\n"
    "From: App <app@example.org>\r\n"
    "To: x@example.com\r\n"
    "Subject: Your code\r\n"
    "Message-ID: <1@example.org>\r\n"
    "\r\n"
    "secret body line\r\n";

static const char pycheck[] =
    "import sys, email\n"
    "from email import policy\n"
    "m = email.message_from_binary_file(open(sys.argv[1], 'rb'))\n"
    "assert m.get_content_type() == 'multipart/report', m.get_content_type()\n"
    "assert m.get_param('report-type') == 'delivery-status'\n"
    "assert m['To'] == '<app@example.org>', m['To']\n"
    "assert m['Auto-Submitted'] == 'auto-replied'\n"
    "p = m.get_payload()\n"
    "assert len(p) == 3, len(p)\n"
    "assert p[0].get_content_type() == 'text/plain'\n"
    "assert p[1].get_content_type() == 'message/delivery-status'\n"
    "assert p[2].get_content_type() == 'text/rfc822-headers'\n"
    "blocks = p[1].get_payload()\n"
    "assert len(blocks) == 3, len(blocks)\n"
    "assert blocks[0]['Reporting-MTA'] == 'dns; mx.example.net'\n"
    "r = {b['Final-Recipient']: b for b in blocks[1:]}\n"
    "assert set(r) == {'rfc822; bad@example.com', 'rfc822; slow@example.net'}, r.keys()\n"
    "b = r['rfc822; bad@example.com']\n"
    "assert b['Action'] == 'failed' and b['Status'] == '5.1.1', (b['Action'], b['Status'])\n"
    "assert b['Diagnostic-Code'].startswith('smtp; 550 5.1.1'), b['Diagnostic-Code']\n"
    "s = r['rfc822; slow@example.net']\n"
    "assert s['Action'] == 'failed' and s['Status'] == '4.7.1', s['Status']\n"
    "h = p[2].get_payload()\n"
    "assert 'Subject: Your code' in h and 'secret body line' not in h\n"
    "print('python-email-ok')\n";

int
main(void)
{
	char path[] = "/tmp/test_dsn.XXXXXX", py[64], cmd[256], line[128];
	struct q_envelope e;
	struct q_rcpt r[3];
	char *msg;
	size_t len, i;
	int fd, bare = 0, ok8 = 1, pyok = 0;
	FILE *fp;

	memset(&e, 0, sizeof(e));
	memset(r, 0, sizeof(r));
	strcpy(e.id, "0005ff0011223344aabbccdd");
	e.klass = Q_CLASS_DEFAULT;
	e.sender = "app@example.org";
	e.created = 1800000000;
	e.expires = 1800432000;
	r[0].addr = "ok@example.com";
	r[0].state = Q_RCPT_DELIVERED;
	r[0].reply = "250 ok";
	r[1].addr = "bad@example.com";
	r[1].state = Q_RCPT_FAILED;
	r[1].reply = "550 5.1.1 <bad@example.com>: Recipient address rejected\r\n\x01 evil";
	r[1].last_attempt = 1800000100;
	r[2].addr = "slow@example.net";
	r[2].state = Q_RCPT_EXPIRED;
	r[2].reply = "451 4.7.1 greylisted";
	e.rcpts = r;
	e.nrcpt = 3;
	e.last_error = "slow@example.net: 451 4.7.1 greylisted";

	msg = dsn_build(&e, orig, sizeof(orig) - 1, "MAILER-DAEMON@mx.example.net",
	    "mx.example.net", 1800432001, &len);
	ok(msg != NULL && len > 0, "DSN built");
	for (i = 0; i < len; i++) {
		if (msg[i] == '\n' && (i == 0 || msg[i - 1] != '\r'))
			bare++;
		if ((unsigned char)msg[i] >= 0x80)
			ok8 = 0;
	}
	is_int(bare, 0, "CRLF line ends only");
	ok(ok8, "7-bit only");
	ok(strstr(msg, "\x01") == NULL, "control bytes of the reply are not copied");
	ok(strstr(msg, "ok@example.com") == NULL, "delivered recipient not reported");
	ok(strstr(msg, "Date: Wed, 20 Jan 2027 08:00:01 +0000") != NULL, "RFC 5322 date");

	if ((fd = mkstemp(path)) == -1 || write(fd, msg, len) != (ssize_t)len)
		return 1;
	close(fd);
	snprintf(py, sizeof(py), "%s.py", path);
	fp = fopen(py, "w");
	fputs(pycheck, fp);
	fclose(fp);
	snprintf(cmd, sizeof(cmd), "python3 %s %s 2>&1", py, path);
	fp = popen(cmd, "r");
	while (fp != NULL && fgets(line, sizeof(line), fp) != NULL)
		if (strncmp(line, "python-email-ok", 15) != 0)
			diag("python: %s", line);
		else
			pyok = 1;
	ok(pyok,
	    "Python's email package parses it as multipart/report with the right fields");
	if (fp)
		pclose(fp);
	unlink(py);
	unlink(path);
	free(msg);

	/* no body at all: still a valid report */
	msg = dsn_build(&e, NULL, 0, NULL, NULL, 1800432001, &len);
	ok(msg != NULL && strstr(msg, "text/rfc822-headers") != NULL, "DSN without the original");
	free(msg);

	/* SMTPUTF8 recipients: utf-8 addresses, \x{HEX} in the 7-bit report
	 * (RFC 6533 3.3) */
	r[1].addr = "j\xc3\xb6rg.\xe7\x94\xa8\xf0\x9f\x98\x80@example.com";
	r[1].reply = "5.6.7 the receiving server does not support SMTPUTF8, which "
	    "this address needs";
	e.sender = "\xc3\xa4pp@example.org";
	msg = dsn_build(&e, NULL, 0, NULL, NULL, 1800432001, &len);
	ok(msg != NULL && strstr(msg, "Final-Recipient: utf-8; j\\x{F6}rg."
	    "\\x{7528}\\x{1F600}@example.com\r\n") != NULL, "Final-Recipient of type utf-8");
	ok(msg != NULL && strstr(msg, "<j\\x{F6}rg.\\x{7528}\\x{1F600}@example.com>: 5.6.7")
	    != NULL, "the human part names it too");
	ok(msg != NULL && strstr(msg, "X-Original-Envelope-From: utf-8; \\x{E4}pp@") != NULL,
	    "a UTF-8 sender too");
	ok(msg != NULL && strstr(msg, "Final-Recipient: rfc822; slow@example.net") != NULL,
	    "ASCII recipients stay rfc822");
	ok(msg != NULL && strstr(msg, "\r\nTo: <\xc3\xa4pp@example.org>\r\n") != NULL,
	    "the To header carries the UTF-8 sender (RFC 6532; it goes by SMTPUTF8)");
	free(msg);
	return done_testing();
}
