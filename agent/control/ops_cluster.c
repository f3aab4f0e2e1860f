/*
 * ops_cluster.c - cluster.status: the sites of the cluster, which is
 * master, each site's log position and lag behind the master, the last
 * election, and the relay's counters (agent/core/cluster.c, store/repl.c).
 */
#include <stdio.h>
#include <time.h>

#include "agent/core/otpmaild.h"
#include "agent/control/control.h"
#include "agent/control/ops.h"
#include "store/store.h"

json_t *
op_cluster_status(struct otpmaild *d, const struct ctl_peer *p, json_t *req)
{
	struct store_cluster_status cs;
	json_t *r, *sites, *e;
	char lsn[32];
	int j, m;

	(void)p;
	(void)req;
	r = reply_ok();
	if (d->cluster == NULL || store_cluster_status(d->store, &cs) == -1) {
		json_object_set_new(r, "role", json_string("alone"));
		return r;
	}
	m = cs.master;
	json_object_set_new(r, "role", json_string(cs.is_master ? "master" : "replica"));
	json_object_set_new(r, "site", json_string(cluster_site_addr(d->cluster, cs.self)));
	json_object_set_new(r, "index", json_integer(cs.self));
	json_object_set_new(r, "master", m >= 0 ?
	    json_string(cluster_site_addr(d->cluster, m)) : json_null());
	json_object_set_new(r, "writable", json_boolean(m >= 0));
	json_object_set_new(r, "last_election", cs.last_election ?
	    json_integer(cs.last_election) : json_null());
	json_object_set_new(r, "elections_seen", json_integer((json_int_t)cs.elections));
	json_object_set_new(r, "generation", json_integer(cs.generation));
	json_object_set_new(r, "commits_without_quorum", json_integer((json_int_t)cs.perm_failed));
	json_object_set_new(r, "writes_forwarded", json_integer((json_int_t)cs.forwarded));
	json_object_set_new(r, "writes_served", json_integer((json_int_t)cs.served));
	json_object_set_new(r, "relay_streams", json_integer(
	    (json_int_t)cluster_relay_streams(d->cluster)));
	json_object_set_new(r, "relay_refused", json_integer(
	    (json_int_t)cluster_relay_refused(d->cluster)));
	sites = json_array();
	for (j = 0; j < cs.nsites; j++) {
		e = json_object();
		json_object_set_new(e, "index", json_integer(j));
		json_object_set_new(e, "site", json_string(cluster_site_addr(d->cluster, j)));
		json_object_set_new(e, "self", json_boolean(j == cs.self));
		json_object_set_new(e, "master", json_boolean(j == m));
		json_object_set_new(e, "connected", json_boolean(cs.sites[j].connected));
		if (cs.sites[j].lsn_known) {
			snprintf(lsn, sizeof(lsn), "%u/%u", cs.sites[j].lsn_file,
			    cs.sites[j].lsn_offset);
			json_object_set_new(e, "lsn", json_string(lsn));
		} else
			json_object_set_new(e, "lsn", json_null());
		/* bytes of log behind the master, when both are in one file */
		if (m >= 0 && cs.sites[j].lsn_known && cs.sites[m].lsn_known &&
		    cs.sites[j].lsn_file == cs.sites[m].lsn_file)
			json_object_set_new(e, "lag_bytes", json_integer(
			    (json_int_t)cs.sites[m].lsn_offset - cs.sites[j].lsn_offset));
		else
			json_object_set_new(e, "lag_bytes", json_null());
		json_array_append_new(sites, e);
	}
	json_object_set_new(r, "sites", sites);
	return r;
}
