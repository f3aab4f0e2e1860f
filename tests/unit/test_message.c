/*
 * test_message.c - message building: buffers, header checks, RFC 2047
 * encoding, folding, CRLF normalisation, quoted-printable, header lookup.
 */
#include <stdlib.h>
#include <string.h>

#include "agent/mail/message.h"
#include "tests/unit/tap.h"

int
main(void)
{
	struct buf b;
	char date[64], mid[256], *v;
	const char *m;
	size_t len, i, col, maxcol;

	buf_init(&b);
	buf_printf(&b, "%s-%d", "x", 42);
	buf_adds(&b, "!");
	is_str(b.data, "x-42!", "buf_printf and buf_adds");
	v = buf_take(&b, &len);
	ok(len == 5 && b.data == NULL && b.len == 0, "buf_take detaches");
	free(v);

	msg_date(0, date, sizeof(date));
	is_str(date, "Thu, 01 Jan 1970 00:00:00 +0000", "RFC 5322 date");
	msg_message_id("mail.example.org", mid, sizeof(mid));
	ok(mid[0] == '<' && strstr(mid, "@mail.example.org>") != NULL, "Message-ID shape");

	ok(msg_header_name_ok("X-Custom"), "header name ok");
	ok(!msg_header_name_ok("Bad Name"), "header name with space refused");
	ok(!msg_header_name_ok("Bad:Name"), "header name with colon refused");
	ok(!msg_header_name_ok(""), "empty header name refused");
	ok(msg_header_value_ok("hello", 100), "header value ok");
	ok(!msg_header_value_ok("a\r\nBcc: x@y.z", 100), "CR LF in value refused");
	ok(!msg_header_value_ok("a\nb", 100), "LF in value refused");
	ok(!msg_header_value_ok("abcdef", 3), "overlong value refused");

	buf_init(&b);
	msg_add_header(&b, "Subject", "plain subject");
	is_str(b.data, "Subject: plain subject\r\n", "ASCII header");
	buf_free(&b);
	msg_add_header(&b, "Subject", "Ihr Anmeldecode f\xc3\xbcr M\xc3\xbcnchen");
	ok(strstr(b.data, "=?UTF-8?B?") != NULL, "non-ASCII becomes an encoded word");
	ok(strchr(b.data, 0xc3) == NULL, "no raw 8-bit left in the header");
	buf_free(&b);
	msg_add_header(&b, "Subject", "word word word word word word word word word word "
	    "word word word word word word word word word word word word");
	maxcol = col = 0;
	for (i = 0; i < b.len; i++) {
		if (b.data[i] == '\r') {
			if (col > maxcol)
				maxcol = col;
			col = 0;
			i++;
		} else
			col++;
	}
	ok(maxcol <= 78, "long header folded within 78 columns");
	ok(strstr(b.data, "\r\n word") != NULL, "folded at white space");
	buf_free(&b);

	{
		char longv[999];
		size_t k, linemax = 0, cur = 0;
		memset(longv, 'x', 998);
		longv[998] = '\0';
		msg_add_header(&b, "Subject", longv);
		for (k = 0; k < b.len; k++) {
			if (b.data[k] == '\r') {
				if (cur > linemax)
					linemax = cur;
				cur = 0;
				k++;
			} else
				cur++;
		}
		ok(linemax <= 998, "a 998-byte word in a header still gives lines of at most 998");
		ok(strstr(b.data, "=?UTF-8?B?") != NULL, "  ...as encoded words");
		buf_free(&b);
	}

	msg_add_crlf_text(&b, "a\nb\r\nc\rd", 8);
	is_str(b.data, "a\r\nb\r\nc\r\nd\r\n", "every line end becomes CRLF, final CRLF added");
	buf_free(&b);

	m = "caf\xc3\xa9 = ok \n.dot";
	msg_add_qp(&b, m, strlen(m));
	is_str(b.data, "caf=C3=A9 =3D ok=20\r\n=2Edot\r\n", "quoted-printable");
	buf_free(&b);

	msg_add_html_escaped(&b, "<a href=\"x\">&'");
	is_str(b.data, "&lt;a href=&quot;x&quot;&gt;&amp;&#39;", "HTML escaping");
	buf_free(&b);

	ok(msg_is_8bit("abc\x80", 4), "8-bit detected");
	ok(!msg_is_8bit("abc", 3), "7-bit detected");

	m = "From: a@b.example\r\nSubject: one\r\n two\r\nX: y\r\n\r\nSubject: body\r\n";
	v = msg_find_header(m, strlen(m), "subject");
	is_str(v, "one two", "header found case-insensitively and unfolded");
	free(v);
	v = msg_find_header(m, strlen(m), "To");
	ok(v == NULL, "absent header; the body is not searched");
	free(v);
	return done_testing();
}
