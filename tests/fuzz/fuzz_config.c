/* Fuzz target: a config file. Must load or fail with a message, never
 * crash or hang (the instruction budget bounds a runaway file). */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
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
    if (hd_config_load(&c, path, err, sizeof err) == 0) hd_config_free(&c);
    unlink(path);
    return 0;
}
