/* RFC 6455 WebSocket framing for the server side.
 *
 * Receive: hd_ws_parser is a streaming parser of client frames. It keeps
 * only a few dozen bytes of state per connection while idle; a message that
 * arrives whole in one read is delivered straight from the read buffer
 * (unmasked in place) with no copy, and only a message split across reads or
 * fragmented is assembled in a heap buffer that exists while it is pending.
 * (wslay was measured at about 8.8 KiB of heap per context, which alone is
 * over Herald's per-connection memory budget; this parser is fuzzed and
 * cross-checked against wslay's encoder in tests/unit/test_ws.c.)
 *
 * Send: server frames are never masked, so a frame is header + payload; the
 * encoder builds one into an hd_buf that any number of connections share. */
#ifndef HD_WS_H
#define HD_WS_H

#include "buf.h"

#include <stddef.h>
#include <stdint.h>

enum {
    HD_WS_CONT = 0x0,
    HD_WS_TEXT = 0x1,
    HD_WS_BINARY = 0x2,
    HD_WS_CLOSE = 0x8,
    HD_WS_PING = 0x9,
    HD_WS_PONG = 0xA,
};

typedef struct hd_ws_callbacks {
    /* A complete data message (HD_WS_TEXT, UTF-8 already validated, or
     * HD_WS_BINARY). data is writable and valid only during the call.
     * Return 0 to go on parsing, non-zero to stop (hd_ws_parse returns it). */
    int (*on_message)(void *ud, int opcode, uint8_t *data, size_t len);
    /* A control frame (PING, PONG, CLOSE). A CLOSE payload has been checked:
     * empty, or a valid code followed by UTF-8. Same return rule. */
    int (*on_control)(void *ud, int opcode, uint8_t *data, size_t len);
} hd_ws_callbacks;

typedef struct hd_ws_parser {
    uint64_t remaining;   /* payload bytes of the current frame still to come */
    uint64_t frame_len;   /* payload length of the current frame */
    uint8_t *msg;         /* assembled data message; NULL when none pending */
    uint32_t msg_len;
    uint32_t max_msg;     /* limit on a whole message's bytes (at most 64 MiB) */
    uint8_t hdr[14];      /* header bytes collected so far */
    uint8_t hdr_len;
    uint8_t in_payload;   /* 1 while reading the current frame's payload */
    uint8_t opcode;       /* opcode of the current frame */
    uint8_t fin;          /* FIN bit of the current frame */
    uint8_t msg_opcode;   /* TEXT/BINARY of a fragmented message in progress, else 0 */
    uint8_t ctl_len;
    uint8_t mask[4];
    uint8_t *ctl;         /* a control frame's payload split across reads
                           * (125 bytes, allocated only while one is) */
} hd_ws_parser;

/* Initialises p; max_msg bounds every data message. */
void hd_ws_parser_init(hd_ws_parser *p, size_t max_msg);
/* Frees a pending message buffer; p may be reused after hd_ws_parser_init. */
void hd_ws_parser_free(hd_ws_parser *p);

/* Parses len bytes of client data (modified in place: unmasked). Returns 0
 * when every byte was consumed, the callback's non-zero value when one asked
 * to stop (*used = bytes consumed so far), or a negative error:
 * HD_EPROTO (close 1002), HD_ETOOBIG (1009), HD_EUTF8 (1007), HD_ENOMEM.
 * used may be NULL. After an error the parser must not be fed again. */
int hd_ws_parse(hd_ws_parser *p, uint8_t *data, size_t len, const hd_ws_callbacks *cb, void *ud,
                size_t *used);

/* Non-zero while part of a frame or of a fragmented message has arrived
 * and the rest has not (timeouts.ws_message_ms runs meanwhile). */
int hd_ws_parser_pending(const hd_ws_parser *p);

/* The close code for an hd_ws_parse error. */
uint16_t hd_ws_close_code(int err);

/* Writes a server frame header (FIN, unmasked) into out; returns its
 * length: 2, 4 or 10. */
size_t hd_ws_header(uint8_t out[10], int opcode, uint64_t len);
/* Returns a new hd_buf holding a whole frame, or NULL when out of memory. */
hd_buf *hd_ws_frame(int opcode, const void *payload, size_t len);
/* The payload of a frame hd_ws_frame built (one whole frame): returns it,
 * with its length in *len and its opcode in *opcode. */
const uint8_t *hd_ws_frame_payload(const hd_buf *f, int *opcode, size_t *len);
/* Returns a close frame with code and reason (reason truncated to fit the
 * 125-byte control payload), or NULL. code 0 means an empty payload. */
hd_buf *hd_ws_close_frame(uint16_t code, const char *reason);

/* Computes Sec-WebSocket-Accept for a client key into out (29 bytes with
 * NUL). Returns 0, or -1 when key is not the base64 of 16 bytes. */
int hd_ws_accept_key(const char *key, size_t len, char out[29]);

#endif
