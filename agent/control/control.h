/*
 * control.h - the interface of agent/control/: the control socket, a UNIX
 * stream socket speaking JSON Lines, with peer credentials deciding roles.
 * One event thread owns the sockets (accept, read, write, limits, idle
 * timeouts); a pool of request workers runs the handlers (ops_*.c, one file
 * per op family, listed in ops.c), one request per connection at a time, so
 * pipelined answers come back in order and a slow handler never blocks
 * other clients.  A worker sends its answer itself when the connection has
 * no output waiting (the usual case), so a request is handed between
 * threads once; the event thread writes only what a full socket left.
 *
 * May call: store/, queue/, dkim/, agent/core/, agent/mail/ and
 * agent/delivery/ through their interface headers.  Must not touch: the
 * network beyond its own socket.  ops.h is internal to this folder.
 */
#ifndef OTPMAIL_CONTROL_H
#define OTPMAIL_CONTROL_H

#include <stddef.h>
#include <sys/types.h>
#include <jansson.h>

#include "agent/core/otpmaild.h"

struct control;

/* Binds the socket (mode, group from config); call before dropping privileges. */
struct control	*control_listen(struct otpmaild *, char *err, size_t errlen);
/* Starts the event thread and the workers. */
int		 control_run(struct control *, char *err, size_t errlen);
/* Stops accepting, finishes the requests in flight, closes everything. */
void		 control_stop(struct control *);

/* Access lists resolved from the config's app_* / admin_* keys. */
struct ctl_acl;
struct ctl_acl	*ctl_acl_new(const struct config *, uid_t self);
void		 ctl_acl_free(struct ctl_acl *);
int		 ctl_acl_roles(const struct ctl_acl *, uid_t, const gid_t *groups, size_t ngroups);

/*
 * Parses one request line and runs its handler: the whole request path but
 * the socket.  Always returns a reply object (echoing the request's "id").
 */
json_t		*ctl_dispatch(struct otpmaild *, const struct ctl_peer *, const char *line, size_t len);

#endif
