/* delivery_stub.c - PLACEHOLDER until delivery lands: nothing is delivered. */
#include <stdlib.h>
#include "agent/delivery.h"
struct delivery { int unused; };
struct delivery *delivery_start(struct otpmaild *d, char *err, size_t len) { return calloc(1, sizeof(struct delivery)); }
void delivery_stop(struct delivery *dl) { free(dl); }
