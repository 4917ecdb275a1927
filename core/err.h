/* Herald error codes.
 *
 * Functions return 0 on success or a negative HD_E* code. libuv's negative
 * codes (UV_E*) pass through unchanged; Herald's own codes live below -10000
 * so the two never collide. hd_strerror() owns the text of both. */
#ifndef HD_ERR_H
#define HD_ERR_H

enum {
    /* memory */
    HD_ENOMEM = -10001,
    /* limits */
    HD_ETOOBIG = -10101,   /* a message, body or header over its limit */
    HD_EFULL = -10102,     /* a bounded queue is full */
    HD_ELIMIT = -10103,    /* a count limit (connections, topics) reached */
    /* protocol */
    HD_EPROTO = -10201,    /* peer broke the protocol */
    HD_EUTF8 = -10202,     /* text that is not UTF-8 */
    HD_EBINARY = -10203,   /* binary data where only text is supported */
    HD_EJSON = -10204,     /* malformed JSON */
    /* state */
    HD_ECLOSED = -10301,   /* the connection is closing or closed */
    HD_ECONFIG = -10302,   /* bad configuration */
};

/* Returns a static string describing err (an HD_E* or UV_E* code). */
const char *hd_strerror(int err);

#endif
