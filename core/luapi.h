/* The C functions Lua sees that need no server: JSON, hashing, base64,
 * clocks, glob matching. script.c adds the server-bound ones (publish,
 * timers, ...); the same pure set is built as the Lua module "herald.c"
 * so that busted specs of lua/ and plugins/ run against the real code. */
#ifndef HD_LUAPI_H
#define HD_LUAPI_H

#include "buf.h"

#include <jansson.h>
#include <lua.h>

/* Largest nesting of tables encoded to JSON (deeper: an error). */
#define HD_LUAPI_MAX_DEPTH 64

/* [-0, +1] Pushes a new table of the pure functions:
 *   json_encode(v) -> string | nil, err     json_decode(s) -> v | nil, err
 *   null (the JSON null sentinel)            hmac_sha256(key, data) -> 32 bytes
 *   sha256(data) -> 32 bytes                 ct_equal(a, b) -> bool
 *   b64_encode(s) / b64url_encode(s) -> string
 *   b64_decode(s) -> string | nil (standard or URL-safe, padding optional)
 *   now() -> seconds since the epoch (float)  monotonic_ms() -> ms (float)
 *   glob(pattern, s) -> bool: hd_glob_match ('*' matches any run of bytes,
 *     also none; every other byte itself; s may hold any bytes). Raises
 *     on a pattern with a NUL byte and on arguments that are neither
 *     strings nor numbers. */
void hd_luapi_push_pure(lua_State *L);

/* The largest string string.rep may build. */
#define HD_LUAPI_MAX_REP (16 << 20)

/* [-0, +0] Replaces the global string.rep (which method calls reach through
 * the string metatable too) with one that refuses results over
 * HD_LUAPI_MAX_REP. Call before the sandbox is filled. */
void hd_luapi_bound_rep(lua_State *L);

/* [-0, +0] Fills the table at the top with the named globals for a sandbox:
 * library tables as shallow copies (a chunk that assigns into `math` does
 * not reach the code outside), plus pcall and xpcall that re-raise the
 * error once *exceeded is non-zero, so that a budget error cannot be
 * swallowed. *exceeded must outlive the table. */
void hd_luapi_fill_sandbox(lua_State *L, const char *const *names, const int *exceeded);

/* [-0, +0] Appends the JSON encoding of the value at idx to out. Returns
 * NULL, or a static message on a value JSON cannot hold (function, NaN,
 * cycle or nesting over HD_LUAPI_MAX_DEPTH, a non-UTF-8 string, mixed
 * keys). Tables with keys 1..n only are arrays; an empty table is {}. */
const char *hd_luapi_to_json(lua_State *L, int idx, hd_str *out);

/* [-0, +1] Pushes v as a Lua value (objects and arrays become tables, null
 * the sentinel). Never raises except on memory errors. */
void hd_luapi_push_json(lua_State *L, json_t *v);

/* [-0, +1] Pushes JSON text decoded, or nil when it does not parse. */
void hd_luapi_push_json_text(lua_State *L, const char *text, size_t len);

/* Lua's compile errors quote the token where the parser stopped ("...:3:
 * unfinished string near '"s3cret }'"). When that token is a string
 * literal, which may be a secret written into the file (api.token =
 * "..."), rewrites msg (a NUL-terminated string in a buffer of size bytes)
 * in place to end "near a string literal (not shown)" instead, truncated
 * to the buffer. Errors are logged: this keeps such a literal out of it. */
void hd_luapi_hide_string_token(char *msg, size_t size);

#endif
