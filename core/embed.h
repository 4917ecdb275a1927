/* Lua sources compiled into the binary (every .lua under lua/herald and plugins),
 * so that herald runs from any directory with no files beside it. */
#ifndef HD_EMBED_H
#define HD_EMBED_H

#include <stddef.h>

typedef struct hd_embedded {
    const char *name;   /* "herald.config", "plugins.jwt", ... */
    const char *src;    /* NUL-terminated */
    size_t len;
} hd_embedded;

/* The table, ended by an entry whose name is NULL. */
extern const hd_embedded hd_embedded_lua[];

/* Returns the module named name, or NULL. */
const hd_embedded *hd_embedded_find(const char *name);

#endif
