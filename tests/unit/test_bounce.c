/*
 * test_bounce.c - agent/delivery/bounce.c: a corpus of real reply texts in
 * the big providers' documented public formats (Gmail, Microsoft, Yahoo/AOL,
 * iCloud, Postfix, the daemon's own connection/TLS/DNS texts) gets its
 * class; every built-in rule is the one that decides at least one reply;
 * an admin's rules go first and bad lines are refused with file:line.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/delivery/bounce.h"
#include "tests/unit/tap.h"

struct sample {
	const char	*reply;
	const char	*klass;
	const char	*list;
};

static const struct sample corpus[] = {
	/* Gmail (support.google.com/a/answer/3726730) */
	{ "550-5.1.1 The email account that you tried to reach does not exist. Please try "
	  "550-5.1.1 double-checking the recipient's email address for typos or "
	  "550 5.1.1 unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser",
	  "hard", "" },
	{ "550-5.2.1 The email account that you tried to reach is disabled.", "hard", "" },
	{ "452-4.2.2 The email account that you tried to reach is over quota. Please direct "
	  "452 4.2.2 the recipient to https://support.google.com/mail/?p=OverQuotaTemp",
	  "mailbox_full", "" },
	{ "552-5.2.2 The email account that you tried to reach is over quota and inactive.",
	  "mailbox_full", "" },
	{ "550-5.7.26 This mail is unauthenticated, which poses a security risk to the "
	  "sender and Gmail users, and has been blocked. The sender must authenticate "
	  "with at least one of SPF or DKIM.", "auth", "" },
	{ "550-5.7.26 Unauthenticated email from example.com is not accepted due to "
	  "domain's DMARC policy.", "auth", "" },
	{ "421-4.7.26 This mail has been rate limited because it is unauthenticated.",
	  "auth", "" },
	{ "550-5.7.23 The message was rejected because of Sender Policy Framework violation",
	  "auth", "" },
	{ "421-4.7.28 Our system has detected an unusual rate of unsolicited mail "
	  "originating from your IP address.", "policy", "" },
	{ "421-4.7.0 This message is suspicious due to the very low reputation of the "
	  "sending IP address.", "policy", "" },
	{ "550-5.7.1 Our system has detected that this message is likely unsolicited mail.",
	  "policy", "" },
	{ "550-5.7.25 The IP address sending this message does not have a PTR record setup",
	  "policy", "" },
	{ "421-4.7.0 Try again later, closing connection.", "temporary", "" },
	{ "450-4.2.1 The user you are trying to contact is receiving mail too quickly.",
	  "temporary", "" },
	{ "421-4.7.0 TLS required for RCPT domain, closing connection.", "transport", "" },
	{ "550-5.7.1 Messages missing a valid address in From: header are not accepted.",
	  "policy", "" },
	/* Microsoft / Outlook.com / Exchange Online */
	{ "550 5.5.0 Requested action not taken: mailbox unavailable", "hard", "" },
	{ "550 5.7.1 Service unavailable, Client host [192.0.2.1] blocked using Spamhaus. "
	  "To request removal from this list see https://www.spamhaus.org/query/ip/192.0.2.1",
	  "policy", "Spamhaus" },
	{ "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact "
	  "your Internet service provider since part of their network is on our block "
	  "list (S3150).", "policy", "Microsoft" },
	{ "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address "
	  "lookup", "hard", "" },
	{ "550 5.4.1 Recipient address rejected: Access denied. AS(201806281)", "hard", "" },
	{ "552 5.2.2 Mailbox full", "mailbox_full", "" },
	{ "550 Mailbox quota exceeded", "mailbox_full", "" },
	{ "552 Requested mail action aborted: exceeded storage allocation",
	  "mailbox_full", "" },
	{ "452 Requested action not taken: insufficient system storage", "temporary", "" },
	{ "451 4.7.650 The mail server [192.0.2.1] has been temporarily rate limited due to "
	  "IP reputation.", "policy", "" },
	{ "550 5.7.606 Access denied, banned sending IP [192.0.2.1].", "policy", "" },
	{ "550 5.7.509 Access denied, sending domain example.com does not pass DMARC "
	  "verification and has a DMARC policy of reject.", "auth", "" },
	{ "550 5.7.515 Access denied, sending domain example.com doesn't meet the required "
	  "authentication level.", "auth", "" },
	/* Yahoo / AOL (senders.yahooinc.com/smtp-error-codes) */
	{ "553 5.7.1 [BL21] Connections will not be accepted from 192.0.2.1, because the ip "
	  "is in Spamhaus's list; see https://postmaster.yahooinc.com/error-codes",
	  "policy", "Spamhaus" },
	{ "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected "
	  "volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
	  "policy", "" },
	{ "421 4.7.0 [TSS09] All messages from 192.0.2.1 will be permanently deferred; "
	  "Retrying will NOT succeed.", "policy", "" },
	{ "554 5.7.9 Message not accepted for policy reasons.  See "
	  "https://postmaster.yahooinc.com/error-codes", "policy", "" },
	{ "550 5.7.9 This mail has been blocked because the sender is unauthenticated. Yahoo "
	  "requires all senders to authenticate with either SPF or DKIM.", "auth", "" },
	{ "554 delivery error: dd This user doesn't have a yahoo.com account "
	  "(someone@yahoo.com) [0] - mta1234.mail.ne1.yahoo.com", "hard", "" },
	{ "552 1 Requested mail action aborted, mailbox not found", "hard", "" },
	/* iCloud */
	{ "554 5.7.1 [CS01] Message rejected due to local policy.", "policy", "" },
	{ "550 5.1.1 <someone@icloud.com>: user does not exist", "hard", "" },
	/* Postfix with the usual DNSBLs, greylisting */
	{ "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using "
	  "zen.spamhaus.org", "policy", "Spamhaus" },
	{ "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using "
	  "b.barracudacentral.org", "policy", "Barracuda" },
	{ "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using "
	  "bl.spamcop.net", "policy", "SpamCop" },
	{ "550 5.7.1 Rejected: listed at dnsbl.sorbs.net", "policy", "SORBS" },
	{ "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using "
	  "dnsbl-1.uceprotect.net", "policy", "UCEPROTECT" },
	{ "554 Your IP is listed on spam.spamrats.com", "policy", "Spamrats" },
	{ "554 Rejected: 192.0.2.1 listed in psbl.surriel.com", "policy", "PSBL" },
	{ "554 5.7.1 Rejected by bl.mailspike.net", "policy", "Mailspike" },
	{ "554 5.7.1 Listed by dnsbl.invaluement.com", "policy", "Invaluement" },
	{ "550 5.7.1 Rejected by Cloudmark Sender Intelligence", "policy", "Cloudmark" },
	{ "550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown in "
	  "virtual mailbox table", "hard", "" },
	{ "450 4.2.0 <a@example.org>: Recipient address rejected: Greylisted, see "
	  "http://postgrey.schweikert.ch/help/example.org.html", "temporary", "" },
	{ "550 5.7.20 No passing DKIM signature found", "auth", "" },
	{ "550 5.7.21 No acceptable DKIM signature found", "auth", "" },
	{ "550 5.7.22 No valid author-matched DKIM signature found", "auth", "" },
	{ "550 5.7.24 SPF validation error", "auth", "" },
	{ "550 5.7.27 Sender address has null MX", "auth", "" },
	{ "550 Message rejected: SPF check failed", "auth", "" },
	{ "553 5.1.7 The sender address is malformed", "policy", "" },
	{ "553 5.1.8 Sender address domain does not exist", "policy", "" },
	{ "550 Requested action not taken: mailbox unavailable", "hard", "" },
	{ "554 5.3.4 Message too big for system", "hard", "" },
	{ "451 4.3.0 Temporary lookup failure", "temporary", "" },
	{ "550 5.7.0 Local Policy Violation", "policy", "" },
	{ "550 Invalid Recipient - https://community.mimecast.com/docs/DOC-1369#550",
	  "hard", "" },
	{ "550 Rejected by header based Anti-Spoofing policy", "policy", "" },
	/* the daemon's own connection, TLS and DNS outcomes */
	{ "connect: Connection refused", "transport", "" },
	{ "connect: timeout after 30s", "transport", "" },
	{ "TLS handshake failed: certificate verify failed", "transport", "" },
	{ "RCPT TO: connection lost or timeout", "transport", "" },
	{ "4.4.3 example.org: DNS lookup failed", "transport", "" },
	{ "4.4.1 not attempted", "transport", "" },
	{ "4.7.5 TLSA lookup for mx.example.org failed: SERVFAIL", "transport", "" },
	{ "530 5.7.10 Encryption needed", "transport", "" },
	{ "4.4.5 connection limit reached for this destination", "temporary", "" },
	{ "4.3.0 delivery interrupted", "temporary", "" },
	{ "5.1.2 example.invalid: no such domain", "hard", "" },
	{ "5.1.10 example.org: null MX: the domain accepts no mail", "hard", "" },
	{ "5.4.4 example.org: only internal addresses", "transport", "" },
	{ "out of memory", "transport", "" },
};

static void
test_corpus(void)
{
	char err[256], name[80];
	struct bounce_rules *rs;
	struct bounce_result res;
	size_t i, k, n = sizeof(corpus) / sizeof(corpus[0]);
	int *hit;

	rs = bounce_rules_parse(bounce_builtin_rules, "built-in", err, sizeof(err));
	ok(rs != NULL, "the built-in rules parse");
	if (rs == NULL) {
		diag("%s", err);
		return;
	}
	hit = calloc(bounce_rules_count(rs), sizeof(*hit));
	for (i = 0; i < n; i++) {
		bounce_classify_with(rs, corpus[i].reply, &res);
		snprintf(name, sizeof(name), "%.60s", corpus[i].reply);
		is_str(bounce_class_name(res.klass), corpus[i].klass, name);
		is_str(res.list, corpus[i].list, "  its blocklist");
		if (res.klass != BOUNCE_NONE && strcmp(bounce_class_name(res.klass),
		    corpus[i].klass) != 0)
			diag("matched line %d", res.line);
		for (k = 0; k < bounce_rules_count(rs); k++)
			if (bounce_rules_line(rs, k) == res.line)
				hit[k]++;
	}
	/* a test per rule: each one decides at least one reply of the corpus */
	for (k = 0; k < bounce_rules_count(rs); k++) {
		snprintf(name, sizeof(name), "built-in rule at line %d decides a sample",
		    bounce_rules_line(rs, k));
		ok(hit[k] > 0, name);
	}
	free(hit);
	bounce_classify_with(rs, "", &res);
	is_str(bounce_class_name(res.klass), "none", "an empty reply is not classified");
	bounce_classify_with(rs, NULL, &res);
	is_str(bounce_class_name(res.klass), "none", "no reply is not classified");
	bounce_rules_free(rs);
}

static void
test_bad_lines(void)
{
	static const struct { const char *text, *want; } bad[] = {
		{ "hard 550\n", "x:1: want class" },
		{ "# c\n\nbouncy 550 5.1.1\n", "x:3: unknown class" },
		{ "hard 55 5.1.1\n", "x:1: bad reply code" },
		{ "hard 650 *\n", "x:1: bad reply code" },
		{ "hard 550 5.1\n", "x:1: bad enhanced code" },
		{ "hard 550 51.1.1\n", "x:1: bad enhanced code" },
		{ "hard 550 * spam\n", "x:1: text must be" },
		{ "hard 550 * \"spam\n", "x:1: text must be" },
		{ "hard 550 * /(/\n", "x:1: bad regex" },
		{ "policy: * *\n", "x:1: bad list name" },
		{ "policy:a/b * *\n", "x:1: bad list name" },
		{ "policy:ThisNameIsMuchLongerThanThirtyTwoChars * *\n", "x:1: bad list name" },
	};
	char err[256];
	struct bounce_rules *rs;
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = '\0';
		rs = bounce_rules_parse(bad[i].text, "x", err, sizeof(err));
		ok(rs == NULL && strncmp(err, bad[i].want, strlen(bad[i].want)) == 0,
		    bad[i].want);
		if (rs != NULL || strncmp(err, bad[i].want, strlen(bad[i].want)) != 0)
			diag("got \"%s\"", err);
		bounce_rules_free(rs);
	}
}

static void
test_admin_file(void)
{
	char path[] = "/tmp/test_bounce.XXXXXX", err[256];
	struct bounce_rules *rs;
	struct bounce_result res;
	FILE *fp;
	int fd;

	if ((fd = mkstemp(path)) == -1 || (fp = fdopen(fd, "w")) == NULL) {
		ok(0, "temporary file");
		return;
	}
	fprintf(fp, "# local\npolicy:LocalList 5xx * \"our-own-rbl\"\n"
	    "mailbox_full 550 5.1.1 /account.*full/\n");
	fclose(fp);
	rs = bounce_rules_load(path, err, sizeof(err));
	ok(rs != NULL, "an admin's file loads");
	if (rs != NULL) {
		bounce_classify_with(rs, "554 5.7.1 listed at our-own-RBL.example", &res);
		is_str(bounce_class_name(res.klass), "policy", "an admin's rule classifies");
		is_str(res.list, "LocalList", "  and names its list");
		is_int(res.line, 2, "  from its line");
		bounce_classify_with(rs, "550 5.1.1 this account is full", &res);
		is_str(bounce_class_name(res.klass), "mailbox_full",
		    "an admin's rule goes before the built-in ones");
		bounce_classify_with(rs, "550 5.1.1 no such user", &res);
		is_str(bounce_class_name(res.klass), "hard", "the built-in rules still apply");
		is_str(res.file, "built-in", "  and say so");
		bounce_rules_free(rs);
	}
	fp = fopen(path, "w");
	fprintf(fp, "hard 550 5.1.1\nhard 5xx bogus\n");
	fclose(fp);
	rs = bounce_rules_load(path, err, sizeof(err));
	ok(rs == NULL && strstr(err, ":2: bad enhanced code") != NULL &&
	    strncmp(err, path, strlen(path)) == 0, "a bad line is refused with file:line");
	bounce_rules_free(rs);
	unlink(path);
	rs = bounce_rules_load(path, err, sizeof(err));
	ok(rs == NULL && strstr(err, "No such file") != NULL, "a missing file is refused");
	ok(bounce_init("", err, sizeof(err)) == 0, "bounce_init with the built-in rules");
	bounce_classify("550 5.2.2 mailbox full", &res);
	is_str(bounce_class_name(res.klass), "mailbox_full", "bounce_classify uses them");
	ok(bounce_init(path, err, sizeof(err)) == -1, "bounce_init refuses a missing file");
	bounce_init(NULL, err, sizeof(err));
	bounce_shutdown();
}

int
main(void)
{
	test_corpus();
	test_bad_lines();
	test_admin_file();
	return done_testing();
}
