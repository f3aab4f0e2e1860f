/*
 * fuzz_config.c - libFuzzer target for the config parser: the input is a
 * config file (config_load reads it through a memfd).  Oracles: a refusal
 * always names the file and says why; an accepted config prints, converts
 * to JSON, and what config_print writes loads again into the same printed
 * configuration (the effective config is a fixed point).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <jansson.h>

#include "agent/core/config.h"

int	LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int	 fz_memfd(const void *, size_t, char *path, size_t pathlen);
static char	*fz_print(const struct config *, size_t *len);

static int
fz_memfd(const void *data, size_t size, char *path, size_t pathlen)
{
	int fd = memfd_create("fuzz-config", MFD_CLOEXEC);

	if (fd == -1)
		abort();
	if (size > 0 && write(fd, data, size) != (ssize_t)size)
		abort();
	snprintf(path, pathlen, "/proc/self/fd/%d", fd);
	return fd;
}

static char *
fz_print(const struct config *c, size_t *len)
{
	char *s = NULL;
	FILE *f = open_memstream(&s, len);

	if (f == NULL)
		abort();
	config_print(c, f);
	fclose(f);
	return s;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct config *c, *c2;
	char path[64], path2[64], err[1024], *p1, *p2, *b1, *b2;
	size_t l1, l2;
	json_t *j;
	int fd, fd2;

	if (size > 65536)
		return 0;
	fd = fz_memfd(data, size, path, sizeof(path));
	err[0] = '\0';
	c = config_load(path, err, sizeof(err));
	close(fd);
	if (c == NULL) {
		if (err[0] == '\0')
			abort();
		return 0;
	}
	if ((j = config_to_json(c)) == NULL)
		abort();
	json_decref(j);
	p1 = fz_print(c, &l1);
	fd2 = fz_memfd(p1, l1, path2, sizeof(path2));
	c2 = config_load(path2, err, sizeof(err));
	close(fd2);
	if (c2 == NULL) {
		fprintf(stderr, "printed config does not load: %s\n---\n%s---\n", err, p1);
		abort();
	}
	p2 = fz_print(c2, &l2);
	/* the first line is a comment naming the file: skip it */
	b1 = strchr(p1, '\n');
	b2 = strchr(p2, '\n');
	if (b1 == NULL || b2 == NULL || strcmp(b1, b2) != 0) {
		fprintf(stderr, "config_print is not a fixed point\n--- 1\n%s--- 2\n%s", p1, p2);
		abort();
	}
	free(p1);
	free(p2);
	config_free(c2);
	config_free(c);
	return 0;
}
