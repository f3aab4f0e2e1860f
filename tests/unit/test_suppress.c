/*
 * test_suppress.c - the suppression lists (store/suppress.c) with an
 * injected clock: add, check (any case), the reply without the address,
 * one app's entries invisible and untouchable to another, remove by
 * address and by id, list paging, expiry and the sweep, entries under the
 * previous secret after a rotation, and no address in clear on disk.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store/store.h"
#include "tests/unit/tap.h"

static char root[] = "/tmp/otpm-supp-XXXXXX";
static char dbdir[300], secret[300], oldsecret[300];
static const time_t T0 = 1800000000;

static struct store *
open_store(const char *cur, const char *old)
{
	struct store_params p;
	char err[512];
	struct store *s;

	store_params_defaults(&p);
	p.dir = dbdir;
	p.secret_file = cur;
	p.old_secret_file = old;
	p.durable = 0;
	if ((s = store_open(&p, err, sizeof(err))) == NULL)
		diag("store_open: %s", err);
	return s;
}

static int
grep_dir(const char *needle)
{
	char cmd[600];

	snprintf(cmd, sizeof(cmd), "grep -rqi -a '%s' '%s'", needle, dbdir);
	return system(cmd) == 0;
}

int
main(void)
{
	struct store_supp e, v[8];
	struct store *s;
	char id[STORE_SUPP_ID_LEN + 1], last[STORE_SUPP_ID_LEN + 1], cmd[700];
	size_t n, total = 0;
	int more, i;

	if (mkdtemp(root) == NULL)
		return 1;
	snprintf(dbdir, sizeof(dbdir), "%s/db", root);
	snprintf(secret, sizeof(secret), "%s/secret", root);
	snprintf(oldsecret, sizeof(oldsecret), "%s/secret.old", root);
	if ((s = open_store(secret, NULL)) == NULL)
		return 1;

	is_int(store_supp_check(s, "shop", "bob@example.org", T0, &e), S_NOTFOUND,
	    "an address never suppressed: not found");
	is_int(store_supp_add(s, "shop", "Bob@Example.org", "hard_bounce",
	    "550 5.1.1 <bob@example.org>: user unknown (bob)", 86400, T0, &e), S_OK, "add");
	is_str(e.reply, "550 5.1.1 <***>: user unknown (***)",
	    "the stored reply has the address (and its local part) cut out");
	snprintf(id, sizeof(id), "%s", e.id);
	ok(strlen(id) == STORE_SUPP_ID_LEN, "the entry's id is its key in hex");
	is_int(store_supp_check(s, "shop", "BOB@example.ORG", T0 + 1, &e), S_OK,
	    "check finds it in any case");
	ok(strcmp(e.reason, "hard_bounce") == 0 && e.created == T0 && e.expires == T0 + 86400,
	    "with its reason, date and expiry");
	is_int(store_supp_check(s, "bank", "bob@example.org", T0 + 1, &e), S_NOTFOUND,
	    "another app does not see it");
	is_int(store_supp_remove(s, "bank", NULL, id, T0 + 1, &e), S_NOTFOUND,
	    "another app cannot remove it by id");
	is_int(store_supp_remove(s, "bank", "bob@example.org", NULL, T0 + 1, &e), S_NOTFOUND,
	    "nor by address");
	is_int(store_supp_check(s, "shop", "bob@example.org", T0 + 1, &e), S_OK,
	    "it is still there");
	is_int(store_supp_list(s, "bank", NULL, T0 + 1, v, 8, &n, &more), S_OK, "list");
	is_int(n, 0, "bank's list is empty");
	ok(store_supp_add(s, "shop", "bad addr@example.org", "x", "", 0, T0, NULL) ==
	    S_BADINPUT && store_supp_add(s, "shop", "a@example.org", "", "", 0, T0, NULL) ==
	    S_BADINPUT, "a bad address or an empty reason is refused");

	/* paging through 12 entries of one app among another's */
	for (i = 0; i < 12; i++) {
		char a[64];

		snprintf(a, sizeof(a), "user%d@example.net", i);
		store_supp_add(s, "news", a, "complaint", "", 0, T0, NULL);
		store_supp_add(s, "other", a, "complaint", "", 0, T0, NULL);
	}
	last[0] = '\0';
	do {
		if (store_supp_list(s, "news", last[0] ? last : NULL, T0, v, 5, &n, &more) != S_OK)
			break;
		for (i = 0; i < (int)n; i++)
			if (strcmp(v[i].app, "news") != 0)
				total += 100;
		total += n;
		if (n > 0)
			snprintf(last, sizeof(last), "%s", v[n - 1].id);
	} while (more);
	is_int(total, 12, "paging by 5 lists news's 12 entries, no other app's");
	is_int(store_supp_list(s, NULL, NULL, T0, v, 8, &n, &more), S_OK, "admin list");
	ok(n == 8 && more, "every app's entries for an admin, paged");

	/* ttl 0 is for good; a ttl entry expires and the sweep deletes it */
	is_int(store_supp_check(s, "news", "user3@example.net", T0 + 86400 * 3650, &e), S_OK,
	    "an entry with ttl 0 is kept for good");
	is_int(store_supp_check(s, "shop", "bob@example.org", T0 + 86400, &e), S_NOTFOUND,
	    "an entry is gone at its expiry");
	store_sweep(s, T0 + 86400, &n);
	is_int(store_supp_remove(s, "shop", NULL, id, T0, &e), S_NOTFOUND,
	    "the sweep deleted the record");
	is_int(store_supp_remove(s, "news", "USER3@example.net", NULL, T0, &e), S_OK,
	    "remove by address");
	store_supp_add(s, "news", "adm@example.net", "complaint", "", 0, T0, &e);
	snprintf(id, sizeof(id), "%s", e.id);
	ok(store_supp_remove(s, NULL, "adm@example.net", NULL, T0, &e) == S_BADINPUT &&
	    store_supp_remove(s, NULL, NULL, id, T0, &e) == S_OK && strcmp(e.app, "news") == 0,
	    "an admin removes any app's entry by id (not by address without an app)");
	is_int(store_supp_check(s, "news", "user3@example.net", T0, &e), S_NOTFOUND,
	    "then it is not suppressed");
	store_supp_add(s, "news", "rot@example.net", "complaint", "", 0, T0, NULL);
	ok(!grep_dir("example.net") && !grep_dir("bob@"), "no address in clear on disk");
	store_close(s);

	/* a rotation: the old secret's entries still count and can be removed */
	snprintf(cmd, sizeof(cmd), "mv '%s' '%s'", secret, oldsecret);
	if (system(cmd) != 0)
		diag("mv failed");
	if ((s = open_store(secret, oldsecret)) == NULL)
		return 1;
	is_int(store_supp_check(s, "news", "rot@example.net", T0, &e), S_OK,
	    "after a secret rotation the old entries still count");
	is_int(store_supp_remove(s, "news", "rot@example.net", NULL, T0, &e), S_OK,
	    "and are removed by address");
	store_close(s);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
	if (system(cmd) != 0)
		diag("cleanup failed");
	return done_testing();
}
