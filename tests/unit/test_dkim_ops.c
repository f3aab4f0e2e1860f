/*
 * test_dkim_ops.c - agent/control/ops_dkim.c without a daemon: dkim.records (JSON
 * list and zone text with TXT strings of at most 255 bytes) and
 * dkim.keygen (file mode, config line, refusals) on a hand-made context.
 * dkim.check needs a DNS server: tests/integration/test_dkim.py.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/control/ops.h"
#include "dkim/dkim_sign.h"
#include "tests/unit/tap.h"

static json_t *
call(json_t *(*fn)(struct otpmaild *, const struct ctl_peer *, json_t *),
    struct otpmaild *d, const char *req)
{
	struct ctl_peer p = { .uid = getuid(), .gid = getgid(), .pid = getpid(), .roles = ROLE_ADMIN };
	json_error_t je;
	json_t *r, *q = json_loads(req, 0, &je);

	r = fn(d, &p, q);
	json_decref(q);
	return r;
}

static const char *
str(json_t *o, const char *k)
{
	return json_string_value(json_object_get(o, k));
}

int
main(void)
{
	char dir[] = "/tmp/test_dkim_ops.XXXXXX", rsa[300], ed[300], err[512];
	char *rsa_txt = NULL, *ed_txt = NULL, *zone, *q, cmd[400];
	struct dkim_key_conf keys[2];
	struct dkim_params prm;
	struct otpmaild d;
	struct stat st;
	json_t *r, *recs, *e;
	size_t i;
	int ok255 = 1, nspf = 0, ndmarc = 0, ndkim = 0;

	if (mkdtemp(dir) == NULL)
		return 1;
	snprintf(rsa, sizeof(rsa), "%s/rsa.key", dir);
	snprintf(ed, sizeof(ed), "%s/ed.key", dir);
	ok(dkim_keygen(DKIM_ALG_RSA_SHA256, 2048, rsa, &rsa_txt, err, sizeof(err)) == 0 &&
	    dkim_keygen(DKIM_ALG_ED25519_SHA256, 0, ed, &ed_txt, err, sizeof(err)) == 0,
	    "keys");
	keys[0] = (struct dkim_key_conf){ "example.org", "rsa1", DKIM_ALG_RSA_SHA256, rsa };
	keys[1] = (struct dkim_key_conf){ "example.org", "ed1", DKIM_ALG_ED25519_SHA256, ed };
	memset(&prm, 0, sizeof(prm));
	prm.keys = keys;
	prm.nkeys = 2;
	prm.relaxed_header = prm.relaxed_body = 1;

	memset(&d, 0, sizeof(d));
	d.cfg = config_load(NULL, err, sizeof(err));
	ok(d.cfg != NULL, "default config");
	if (d.cfg == NULL) {
		diag("%s", err);
		return done_testing();
	}
	d.state_dir = dir;
	d.hostname = "mail.example.org";
	pthread_rwlock_init(&d.reload_lock, NULL);

	/* no signer: an empty list and a note */
	r = call(op_dkim_records, &d, "{\"op\":\"dkim.records\"}");
	ok(json_is_true(json_object_get(r, "ok")) &&
	    json_array_size(json_object_get(r, "records")) == 0 && str(r, "note"),
	    "dkim.records without keys: empty list and a note");
	json_decref(r);

	d.dkim = dkim_signer_new(&prm, err, sizeof(err));
	ok(d.dkim != NULL, "signer");
	r = call(op_dkim_records, &d, "{\"op\":\"dkim.records\"}");
	recs = json_object_get(r, "records");
	json_array_foreach(recs, i, e) {
		const char *kind = str(e, "kind");

		if (strcmp(kind, "dkim") == 0) {
			ndkim++;
			if (strcmp(str(e, "selector"), "rsa1") == 0) {
				is_str(str(e, "name"), "rsa1._domainkey.example.org.",
				    "RSA record name");
				is_str(str(e, "value"), rsa_txt, "RSA record value");
			} else {
				is_str(str(e, "value"), ed_txt, "Ed25519 record value");
			}
		} else if (strcmp(kind, "spf") == 0) {
			nspf++;
			is_str(str(e, "name"), "example.org.", "SPF at the domain");
			is_str(str(e, "value"), "v=spf1 mx a:mail.example.org -all",
			    "SPF suggestion names this host");
			ok(str(e, "note") != NULL, "SPF comes with a note");
		} else if (strcmp(kind, "dmarc") == 0) {
			ndmarc++;
			is_str(str(e, "name"), "_dmarc.example.org.", "DMARC name");
			is_str(str(e, "value"),
			    "v=DMARC1; p=none; rua=mailto:dmarc@example.org",
			    "DMARC suggestion: p=none with reports first");
		}
		is_str(str(e, "type"), "TXT", "type TXT");
		is_str(str(e, "domain"), "example.org", "domain");
	}
	is_int(ndkim, 2, "two DKIM records");
	is_int(nspf, 1, "one SPF record for the domain");
	is_int(ndmarc, 1, "one DMARC record for the domain");
	zone = strdup(str(r, "zone") ? str(r, "zone") : "");
	for (q = strtok(zone, "\""), i = 0; q != NULL; q = strtok(NULL, "\""), i++)
		if (i % 2 == 1 && strlen(q) > 255)
			ok255 = 0;
	ok(ok255, "zone: every TXT string is at most 255 bytes");
	ok(strstr(str(r, "zone"), "rsa1._domainkey.example.org.\tIN\tTXT\t\"v=DKIM1; k=rsa; p=")
	    != NULL, "zone line for the RSA key");
	ok(strstr(str(r, "zone"), "\" \"") != NULL, "the RSA-2048 record is split");
	ok(strstr(str(r, "zone"), "PRIVATE") == NULL, "no private key in the zone");
	free(zone);
	json_decref(r);
	r = call(op_dkim_records, &d, "{\"op\":\"dkim.records\",\"domain\":\"other.example\"}");
	is_int(json_array_size(json_object_get(r, "records")), 0,
	    "dkim.records for another domain: nothing");
	json_decref(r);

	/* keygen */
	r = call(op_dkim_keygen, &d, "{\"op\":\"dkim.keygen\",\"domain\":\"Example.COM\","
	    "\"selector\":\"s1\",\"algorithm\":\"ed25519\"}");
	ok(json_is_true(json_object_get(r, "ok")), "dkim.keygen ed25519");
	snprintf(cmd, sizeof(cmd), "%s/dkim/example.com.s1.key", dir);
	is_str(str(r, "file"), cmd, "default file <state_dir>/dkim/<domain>.<selector>.key");
	ok(stat(cmd, &st) == 0 && (st.st_mode & 0777) == 0600, "key file mode 0600");
	snprintf(cmd, sizeof(cmd), "%s/dkim", dir);
	ok(stat(cmd, &st) == 0 && (st.st_mode & 0777) == 0700, "key directory mode 0700");
	snprintf(cmd, sizeof(cmd), "dkim_key = example.com s1 ed25519-sha256 %s/dkim/"
	    "example.com.s1.key", dir);
	is_str(str(r, "config_line"), cmd, "config line to add");
	e = json_object_get(r, "record");
	is_str(str(e, "name"), "s1._domainkey.example.com.", "record name");
	ok(str(e, "value") && strncmp(str(e, "value"), "v=DKIM1; k=ed25519; p=", 22) == 0,
	    "record value");
	{
		char *rec = dkim_key_record(str(r, "file"), DKIM_ALG_ED25519_SHA256, err,
		    sizeof(err));

		is_str(rec, str(e, "value"), "the record is the written key's");
		free(rec);
	}
	json_decref(r);
	r = call(op_dkim_keygen, &d, "{\"op\":\"dkim.keygen\",\"domain\":\"example.com\","
	    "\"selector\":\"s1\"}");
	is_str(str(r, "error"), "conflict", "an existing key is never overwritten");
	json_decref(r);
	r = call(op_dkim_keygen, &d, "{\"op\":\"dkim.keygen\",\"domain\":\"example.com\","
	    "\"selector\":\"r1\",\"bits\":1024}");
	ok(json_is_true(json_object_get(r, "ok")) &&
	    json_integer_value(json_object_get(r, "bits")) == 1024, "RSA 1024 keygen");
	json_decref(r);
	r = call(op_dkim_keygen, &d, "{\"op\":\"dkim.keygen\",\"domain\":\"example.com\","
	    "\"selector\":\"r2\",\"bits\":512}");
	is_str(str(r, "field"), "bits", "512 bits refused");
	json_decref(r);
	r = call(op_dkim_keygen, &d, "{\"op\":\"dkim.keygen\",\"domain\":\"a b\","
	    "\"selector\":\"x\"}");
	is_str(str(r, "field"), "domain", "bad domain refused");
	json_decref(r);
	r = call(op_dkim_keygen, &d, "{\"op\":\"dkim.keygen\",\"domain\":\"example.com\","
	    "\"selector\":\"../x\"}");
	is_str(str(r, "field"), "selector", "a selector with a slash is refused");
	json_decref(r);
	r = call(op_dkim_keygen, &d, "{\"op\":\"dkim.keygen\",\"domain\":\"example.com\","
	    "\"selector\":\"x\",\"algorithm\":\"dsa\"}");
	is_str(str(r, "field"), "algorithm", "unknown algorithm refused");
	json_decref(r);
	r = call(op_dkim_keygen, &d, "{\"op\":\"dkim.keygen\",\"domain\":\"example.com\","
	    "\"selector\":\"x\",\"file\":\"relative.key\"}");
	is_str(str(r, "field"), "file", "a relative file is refused");
	json_decref(r);
	snprintf(cmd, sizeof(cmd), "{\"op\":\"dkim.keygen\",\"domain\":\"example.com\","
	    "\"selector\":\"f\",\"file\":\"%s/chosen.key\"}", dir);
	r = call(op_dkim_keygen, &d, cmd);
	snprintf(cmd, sizeof(cmd), "%s/chosen.key", dir);
	ok(json_is_true(json_object_get(r, "ok")) && stat(cmd, &st) == 0 &&
	    (st.st_mode & 0777) == 0600, "keygen to a chosen file");
	json_decref(r);

	dkim_signer_free(d.dkim);
	config_free(d.cfg);
	free(rsa_txt);
	free(ed_txt);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	(void)!system(cmd);
	return done_testing();
}
