/*
 * fuzz_smtp.c - libFuzzer target for SMTP reply parsing as a delivery runs
 * it: libetpan's reply reader and EHLO parser under otpmail's own stream
 * and smtp.c's session logic (greeting, EHLO/HELO fallback, STARTTLS offer
 * and refusal, MAIL/RCPT/DATA, RSET, QUIT, reply-text cleaning).  The
 * input after its first byte is everything the "server" says, fed through
 * a socketpair; bit 0 of the first byte asks for STARTTLS (policy may),
 * bit 1 sends an 8-bit message.  smtp.c is included so its static session
 * set-up can be driven without a TCP connect.  Oracles: every outcome is
 * OK/TEMP/PERM, every reply text is bounded, printable and one line, and a
 * recipient is OK only if the server said 2xx at the end of DATA.
 */
#include "agent/delivery/smtp.c"

#include <sys/socket.h>
#include <unistd.h>

int	LLVMFuzzerInitialize(int *argc, char ***argv);
int	LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct smtp_tls *fz_ctx;

static void	fz_check_text(const char *, size_t max);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char err[256];

	if ((fz_ctx = smtp_tls_new(NULL, err, sizeof(err))) == NULL)
		abort();
	return 0;
}

static void
fz_check_text(const char *s, size_t max)
{
	size_t i, n = strnlen(s, max);

	if (n >= max)
		abort();
	for (i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] >= 0x7f)
			abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char msg8[] = "From: a@example.org\r\nSubject: t\r\n\r\nh\xc3\xa9llo\r\n.\r\n";
	static const char msg7[] = "From: a@example.org\r\nSubject: t\r\n\r\nhello\r\n..\r\n";
	struct smtp_params p;
	struct smtp_rcpt r[3];
	struct smtp_session *s;
	mailstream *stream;
	char reply[SMTP_REPLY_MAX];
	size_t off, i;
	ssize_t n;
	int sv[2], flags, eight, tls_failed = 0, bufsz = 1 << 20;

	if (size < 1 || size > 65536)
		return 0;
	flags = data[0];
	eight = (flags & 2) != 0;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == -1)
		abort();
	setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &bufsz, sizeof(bufsz));
	setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &bufsz, sizeof(bufsz));
	for (off = 1; off < size; off += (size_t)n)
		if ((n = write(sv[1], data + off, size - off)) <= 0)
			abort();
	shutdown(sv[1], SHUT_WR);

	memset(&p, 0, sizeof(p));
	p.helo = "fuzz.example.org";
	p.tls_name = "mx.example.org";
	p.policy = (flags & 1) ? TLS_MAY : TLS_NONE;
	p.tls_ctx = fz_ctx;
	p.connect_timeout = p.greeting_timeout = p.command_timeout = 2;
	p.data_timeout = p.data_done_timeout = 2;
	if ((s = calloc(1, sizeof(*s))) == NULL)
		abort();
	s->p = p;
	s->tls_auth = "none";
	if ((s->smtp = mailsmtp_new(0, NULL)) == NULL)
		abort();
	if ((s->low = tlsstream_low_new(sv[0])) == NULL)
		abort();
	if ((stream = mailstream_new(s->low, SMTP_STREAM_BUF)) == NULL)
		abort();
	s->smtp->stream = stream;
	tlsstream_set_timeout(s->low, p.greeting_timeout, 1);
	s->smtp->response_code = 0;
	reply[0] = '\0';
	if (mailsmtp_read_response(s->smtp) != 220) {
		smtp_reply_text(s, "greeting", reply, sizeof(reply));
		fz_check_text(reply, sizeof(reply));
		smtp_kill(s);
		goto done;
	}
	s->usable = 1;
	if (smtp_ehlo(s, reply, sizeof(reply)) == -1) {
		fz_check_text(reply, sizeof(reply));
		smtp_kill(s);
		goto done;
	}
	if (p.policy != TLS_NONE &&
	    smtp_starttls(s, &tls_failed, reply, sizeof(reply)) != SMTP_OK) {
		fz_check_text(reply, sizeof(reply));
		smtp_kill(s);
		goto done;
	}
	memset(r, 0, sizeof(r));
	r[0].addr = "one@example.org";
	r[1].addr = "two@example.net";
	r[2].addr = "bad address@example.org";	/* refused locally */
	smtp_send(s, "sender@example.org", r, 3, eight ? msg8 : msg7,
	    eight ? sizeof(msg8) - 1 : sizeof(msg7) - 1, eight);
	for (i = 0; i < 3; i++) {
		if (r[i].status != SMTP_OK && r[i].status != SMTP_TEMP &&
		    r[i].status != SMTP_PERM)
			abort();
		fz_check_text(r[i].reply, sizeof(r[i].reply));
	}
	if (r[2].status == SMTP_OK)
		abort();	/* a malformed address never reaches the server */
	if (r[0].status == SMTP_OK && s->nmsgs != 1) {
		/* ok only after a 2xx to the final dot, else mail is lost */
		fprintf(stderr, "smtp_send: recipient reported SMTP_OK (code %d, "
		    "\"%s\") but no message was accepted\n", r[0].code, r[0].reply);
		abort();
	}
	smtp_reset(s);
	smtp_close(s);
done:
	close(sv[1]);
	return 0;
}
