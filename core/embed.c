#include "embed.h"

#include <string.h>

const hd_embedded *hd_embedded_find(const char *name)
{
    for (const hd_embedded *e = hd_embedded_lua; e->name; e++)
        if (strcmp(e->name, name) == 0) return e;
    return NULL;
}
