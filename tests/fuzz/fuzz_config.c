/* Fuzz target: a config file (core/config.c and the schema in
 * lua/herald/config.lua). It must load or fail with a message, never crash
 * or hang (the instruction budget bounds a runaway file). A loaded config
 * must satisfy the schema's promises. */
#include "config.h"
#include "err.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void check(int cond, const char *what, const char *path)
{
    if (!cond) {
        fprintf(stderr, "fuzz_config: %s (%s)\n", what, path);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int once;
    if (!once) {
        unsetenv("HERALD_PORT");
        unsetenv("HERALD_API_TOKEN");
        once = 1;
    }
    char path[] = "/tmp/herald-fuzz-config-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return 0;
    if (write(fd, data, size) != (ssize_t)size) {
        close(fd);
        unlink(path);
        return 0;
    }
    close(fd);
    hd_config c;
    char err[1024];
    memset(err, 0x55, sizeof err);
    int rc = hd_config_load(&c, path, err, sizeof err);
    if (rc == 0) {
        check(c.host && c.source, "no host", path);
        check(c.port >= 0 && c.port <= 65535, "port out of range", path);
        check(c.nmounts >= 1 && c.nmounts <= 16, "mount count", path);
        for (size_t i = 0; i < c.nmounts; i++) {
            size_t l = strlen(c.ws_paths[i]);
            check(c.ws_paths[i][0] == '/' && l >= 10 &&
                      strcmp(c.ws_paths[i] + l - 10, "/websocket") == 0,
                  "a WebSocket path not ending in /websocket", path);
            check(!strstr(c.ws_paths[i], "//"), "a WebSocket path with //", path);
        }
        check(c.max_message_bytes >= 128, "max_message_bytes under 128", path);
        check(c.max_header_bytes >= 256, "max_header_bytes under 256", path);
        check(c.max_connections >= 1 && c.max_topics_per_socket >= 1, "zero limits", path);
        check(c.ws_idle_ms >= 10 && c.http_idle_ms >= 10 && c.ws_close_ms >= 10, "timeouts", path);
        check(c.hook_budget_ms >= 1, "budget_ms", path);
        check(c.log_level >= 0 && c.log_level <= 3, "log level", path);
        for (size_t i = 0; i < c.nscripts; i++) check(c.scripts[i] && c.scripts[i][0], "script", path);
        for (size_t i = 0; i < c.nplugins; i++)
            check(c.plugins[i].name && c.plugins[i].options_json, "plugin", path);
        for (size_t i = 0; i < c.ntopic_rules; i++)
            check(c.topic_rules[i].match && c.topic_rules[i].match[0], "topic rule", path);
        hd_config_free(&c);
    } else {
        check(rc == HD_ECONFIG || rc == HD_ENOMEM, "an undocumented error", path);
        check(memchr(err, 0, sizeof err) != NULL && err[0], "no error message", path);
        check(c.host == NULL && c.ws_paths == NULL, "a failed load left memory behind", path);
    }
    unlink(path);
    return 0;
}
