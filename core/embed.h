/* Files compiled into the binary, so that herald runs from any directory
 * with no files beside it: the Lua sources (every .lua under lua/herald and
 * plugins) and the web assets (web/: the status and demo pages, and
 * phoenix.js from the phoenix npm package). */
#ifndef HD_EMBED_H
#define HD_EMBED_H

#include <stddef.h>

typedef struct hd_embedded {
    const char *name;   /* "herald.config", "plugins.jwt"; web: "admin.html", "phoenix.js" */
    const char *src;    /* NUL-terminated */
    size_t len;
} hd_embedded;

/* The tables, each ended by an entry whose name is NULL. */
extern const hd_embedded hd_embedded_lua[];
extern const hd_embedded hd_embedded_web[];

/* Returns the Lua module named name, or NULL. */
const hd_embedded *hd_embedded_find(const char *name);
/* Returns the web asset named name (a file name of web/, or "phoenix.js"),
 * or NULL (phoenix.js is absent when the build did not find it). */
const hd_embedded *hd_embedded_web_find(const char *name);

#endif
