#include "embed.h"

#include <string.h>

static const hd_embedded *find_in(const hd_embedded *table, const char *name)
{
    for (const hd_embedded *e = table; e->name; e++)
        if (strcmp(e->name, name) == 0) return e;
    return NULL;
}

const hd_embedded *hd_embedded_find(const char *name) { return find_in(hd_embedded_lua, name); }

const hd_embedded *hd_embedded_web_find(const char *name) { return find_in(hd_embedded_web, name); }
