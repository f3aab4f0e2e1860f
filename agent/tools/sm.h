/*
 * sm.h - the pieces of otpmail-sendmail that work on addresses and message
 * bytes (sm_rewrite.c): RFC 5322 address lists, /etc/aliases, qualifying
 * unqualified addresses with the origin domain, and making a message that
 * is not UTF-8 fit for the JSON protocol.  No I/O to the daemon here.
 */
#ifndef OTPMAIL_SM_H
#define OTPMAIL_SM_H

#include <stddef.h>
#include <stdio.h>

#define SM_MAX_RCPT	1000
#define SM_ALIAS_DEPTH	8

struct sm_list {
	char	**v;
	size_t	  n;
};
/* Adds a copy of s[0..len), trimmed, unless empty, a duplicate, or full. */
void	 sm_list_add(struct sm_list *, const char *s, size_t len);
void	 sm_list_free(struct sm_list *);

/* Adds each address of an address list ("A <a@b>, c (comment), g: d;"). */
void	 sm_addr_list(struct sm_list *, const char *s, size_t len);

/* Length of the header section, the blank line included. */
size_t	 sm_header_len(const char *m, size_t len);
/* Adds the addresses of every header field called name. */
void	 sm_header_addrs(const char *m, size_t hdrlen, const char *name, struct sm_list *);
/* Removes every Bcc field; returns the new length. */
size_t	 sm_strip_bcc(char *m, size_t len, size_t hdrlen);

/* "root" -> "root@origin"; anything with an @ is returned as a copy. */
char	*sm_qualify(const char *addr, const char *origin);
/*
 * A copy of the message whose address fields (From, To, Cc, Reply-To,
 * Sender, Resent-*) hold no unqualified address: each gets "@origin".
 */
char	*sm_rewrite_headers(const char *m, size_t len, const char *origin, size_t *outlen);

/* /etc/aliases: "name: addr, name2" lines, continuation lines indented. */
struct sm_aliases;
/* A missing file is an empty table.  Unsupported targets (|cmd, /file,
 * :include:) are reported on warn (may be NULL) and skipped. */
struct sm_aliases *sm_aliases_load(const char *path, FILE *warn, char *err, size_t errlen);
size_t	 sm_aliases_count(const struct sm_aliases *);
void	 sm_aliases_free(struct sm_aliases *);
/*
 * Adds the envelope recipients for addr: local names (no @, or @localhost)
 * through the aliases, recursively, then qualified with origin.
 */
void	 sm_resolve(const struct sm_aliases *, const char *origin, const char *addr,
	    struct sm_list *out);

int	 sm_utf8_valid(const char *, size_t);
/*
 * A message that is not valid UTF-8 (an 8-bit body in Latin-1, say) made
 * 7-bit: each non-multipart entity with such a body is re-encoded as
 * quoted-printable (its charset label still true), headers' stray bytes are
 * read as Latin-1.  Returns a new buffer (the input when already UTF-8 is
 * copied too).
 */
char	*sm_make_utf8(const char *m, size_t len, size_t *outlen);

#endif
