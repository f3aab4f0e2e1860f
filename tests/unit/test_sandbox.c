/*
 * test_sandbox.c - agent/delivery/sandbox.c: a delivery lands in new/ with the
 * envelope lines and nothing left in tmp/, listing is newest first with
 * decoded headers, reading refuses names that could leave the Maildir.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/time.h>

#include "agent/delivery/sandbox.h"
#include "tests/unit/tap.h"

static int
count_dir(const char *path)
{
	struct dirent *de;
	DIR *d;
	int n = 0;

	if ((d = opendir(path)) == NULL)
		return -1;
	while ((de = readdir(d)) != NULL)
		if (de->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

int
main(void)
{
	char base[] = "/tmp/otpmail-test-sandbox-XXXXXX", md[512], p[1024];
	char name1[SANDBOX_NAME_MAX + 1], name2[SANDBOX_NAME_MAX + 1], nm[SANDBOX_NAME_MAX + 1];
	char err[512], *data;
	const char *rc[] = { "alice@example.org", "bob@example.net" };
	const char *m1 = "From: App <app@example.com>\r\nTo: alice@example.org\r\n"
	    "Subject: =?UTF-8?B?Q29kZTog?= =?UTF-8?Q?caf=C3=A9?=\r\n"
	    "Date: Thu, 26 Nov 2026 12:00:00 +0000\r\n\r\nYour code is 123456\r\n";
	const char *m2 = "From: x@example.com\nTo: bob@example.net\nSubject: second\n"
	    "\tfolded\n\nbody\n";
	struct sandbox_entry *v = NULL;
	struct config cfg;
	struct timeval tv[2];
	size_t n, len;
	int r;

	if (mkdtemp(base) == NULL)
		return 1;
	snprintf(md, sizeof(md), "%s/sandbox", base);
	memset(&cfg, 0, sizeof(cfg));
	cfg.sandbox_maildir = "";
	sandbox_dir(&cfg, base, p, sizeof(p));
	is_str(p, md, "empty sandbox_maildir: <state_dir>/sandbox");
	cfg.sandbox_maildir = "/x/y";
	sandbox_dir(&cfg, base, p, sizeof(p));
	is_str(p, "/x/y", "sandbox_maildir wins");

	r = sandbox_list(md, 10, &v, &n, err, sizeof(err));
	ok(r == 0 && n == 0, "missing Maildir lists empty");
	free(v);

	r = sandbox_deliver(md, "0123456789abcdef01234567", "app@example.com", rc, 2,
	    m1, strlen(m1), name1, sizeof(name1), err, sizeof(err));
	is_int(r, 0, "delivered");
	snprintf(p, sizeof(p), "%s/tmp", md);
	is_int(count_dir(p), 0, "nothing left in tmp/");
	snprintf(p, sizeof(p), "%s/new", md);
	is_int(count_dir(p), 1, "one file in new/");
	ok(sandbox_name_ok(name1) && strstr(name1, "0123456789abcdef01234567") != NULL,
	    "file name carries the queue id");

	r = sandbox_read(md, name1, 1 << 20, &data, &len, nm, sizeof(nm), err, sizeof(err));
	is_int(r, 0, "read back by name");
	if (r == 0) {
		const char *want = "Return-Path: <app@example.com>\r\nDelivered-To: "
		    "alice@example.org\r\nDelivered-To: bob@example.net\r\nFrom: App";

		ok(strncmp(data, want, strlen(want)) == 0,
		    "envelope lines in the message's CRLF, then the message");
		ok(len == strlen(data) && strstr(data, "Your code is 123456\r\n") != NULL,
		    "body intact");
		free(data);
	}

	/* A second, older-looking then newer message: order by mtime. */
	r = sandbox_deliver(md, "0123456789abcdef01234568", "", rc + 1, 1,
	    m2, strlen(m2), name2, sizeof(name2), err, sizeof(err));
	is_int(r, 0, "second delivered (null sender)");
	snprintf(p, sizeof(p), "%s/new/%s", md, name1);
	gettimeofday(&tv[0], NULL);
	tv[0].tv_sec -= 100;
	tv[1] = tv[0];
	utimes(p, tv);
	r = sandbox_list(md, 10, &v, &n, err, sizeof(err));
	ok(r == 0 && n == 2, "two listed");
	if (r == 0 && n == 2) {
		is_str(v[0].file, name2, "newest first");
		is_str(v[0].subject, "second folded", "folded subject unfolded");
		is_str(v[1].subject, "Code: caf\xc3\xa9", "RFC 2047 B and Q words decoded");
		is_str(v[1].from, "App <app@example.com>", "from");
		is_str(v[1].to, "alice@example.org", "to");
		is_str(v[1].date, "Thu, 26 Nov 2026 12:00:00 +0000", "date");
		ok(v[1].size > strlen(m1), "size includes the envelope lines");
	}
	free(v);
	r = sandbox_list(md, 1, &v, &n, err, sizeof(err));
	ok(r == 0 && n == 1 && strcmp(v[0].file, name2) == 0, "limit keeps the newest");
	free(v);

	r = sandbox_read(md, NULL, 1 << 20, &data, &len, nm, sizeof(nm), err, sizeof(err));
	ok(r == 0 && strcmp(nm, name2) == 0 && strstr(data, "Return-Path: <>\n") == data,
	    "latest = newest; LF message gets LF envelope lines");
	if (r == 0)
		free(data);
	r = sandbox_read(md, name1, 10, &data, &len, nm, sizeof(nm), err, sizeof(err));
	ok(r == 0 && len == 10, "read is bounded");
	if (r == 0)
		free(data);

	ok(!sandbox_name_ok("../../etc/passwd"), "path traversal refused");
	ok(!sandbox_name_ok(".hidden") && !sandbox_name_ok("a/b") && !sandbox_name_ok(""),
	    "dot files, slashes and empty names refused");
	r = sandbox_read(md, "../x", 100, &data, &len, nm, sizeof(nm), err, sizeof(err));
	is_int(r, -1, "read refuses a bad name");
	r = sandbox_read(md, "1.M1P1Q1_nothere.otpmail", 100, &data, &len, nm, sizeof(nm),
	    err, sizeof(err));
	is_int(r, 1, "unknown name: not found");

	snprintf(p, sizeof(p), "rm -rf '%s'", base);
	(void)!system(p);
	return done_testing();
}
