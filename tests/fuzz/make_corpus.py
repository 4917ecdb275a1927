#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/).

    python3 tests/fuzz/make_corpus.py

Seeds are small valid (and a few invalid) inputs for every route and
message kind, in the input formats the targets document at their top.
Files whose names start with "crash-" or "regress-" are kept: they are
inputs that once failed, kept as regression seeds."""
import base64
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = b"\x12\x34\x56\x78"


def frame(payload, op=1, fin=True, mask=KEY, rsv=0):
    """A client frame (masked unless mask is None)."""
    if isinstance(payload, str):
        payload = payload.encode()
    b0 = (0x80 if fin else 0) | rsv << 4 | op
    n = len(payload)
    m = 0x80 if mask is not None else 0
    if n < 126:
        head = bytes([b0, m | n])
    elif n < 65536:
        head = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack(">Q", n)
    if mask is None:
        return head + payload
    return head + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload))


HANDSHAKE = (b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             b"Sec-WebSocket-Version: 13\r\n\r\n")


def get(path, extra=b""):
    return b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n"


def post(path, body, ctype=b"application/json", extra=b""):
    return (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: " + ctype +
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)


def chunked(path, parts):
    out = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    for p in parts:
        out += b"%x\r\n" % len(p) + p + b"\r\n"
    return out + b"0\r\n\r\n"


MULTIPART = b"multipart/form-data; boundary=XyZ"


def part(name, value, params=b""):
    """One part of a multipart/form-data body with the boundary XyZ."""
    return (b'--XyZ\r\nContent-Disposition: form-data; name="' + name + b'"' + params + b"\r\n\r\n" +
            value + b"\r\n")


JOIN = '["1","1","room:1","phx_join",{}]'
PUSH = b'{"channel":"room:1","event":"e","data":{"a":1}}'

server = {
    # mode 0: raw HTTP
    "0-healthz": get(b"/healthz"),
    "0-readyz": get(b"/readyz"),
    "0-metrics": get(b"/metrics"),
    "0-status": get(b"/admin/status"),
    "0-topics": get(b"/api/topics/room%3A1"),
    "0-presence": get(b"/api/presence/p%3A1"),
    "0-notfound": get(b"/nope?x=1"),
    "0-pipelined": get(b"/healthz") + get(b"/readyz") + get(b"/api/topics/a"),
    "0-push-json": post(b"/api/push", PUSH),
    "0-push-batch": post(b"/api/push", b'[{"channel":["room:1","p:1"],"event":"e","data":1},'
                         b'{"channel":"c:1","event":"x","data":"s"}]'),
    "0-push-form": post(b"/api/push", b"channel=room%3A1&event=e&data=x",
                        b"application/x-www-form-urlencoded"),
    "0-push-chunked": chunked(b"/api/push", [b'{"channel":"d:1",', b'"event":"e","data":[1,2]}']),
    "0-push-token": post(b"/api/push", PUSH, extra=b"Authorization: Bearer abc\r\n"),
    # multipart/form-data (RFC 7578): fields, lists, a file part, framing variants, malformed
    "0-push-multipart": post(b"/api/push", part(b"channel", b"room:1") + part(b"event", b"e") +
                             part(b"data", b'{"a":1}') + b"--XyZ--\r\n", MULTIPART),
    "0-push-multipart-list": post(b"/api/push", b"preamble\r\n" + part(b"channel", b"c:1") +
                                  part(b"channel[]", b"p:1") + part(b"channel[]", b"d:1") +
                                  b"--XyZ \t\r\nContent-Type: text/plain\r\nCONTENT-DISPOSITION: "
                                  b"Form-Data;name=event\r\n\r\nev\r\n" +
                                  part(b"data", b"x", b'; filename="f.txt"') + b"--XyZ\r\n\r\nbare\r\n" +
                                  part(b"data", b"line\r\n--Xy\r\n") + b"--XyZ--\r\nepilogue", MULTIPART),
    "0-push-multipart-quoted": post(b"/api/push?event=q",
                                    b'\r\n--a b\'()+_,-./:=?\r\nContent-Disposition: form-data; name="channel"'
                                    b'\r\n\r\nroom:1\r\n--a b\'()+_,-./:=?\r\nContent-Disposition: form-data; '
                                    b'name=data\r\n\r\n\r\n--a b\'()+_,-./:=?--',
                                    b'multipart/form-data; charset=utf-8; boundary="a b\'()+_,-./:=?"; x=y'),
    "0-push-multipart-bad": post(b"/api/push", part(b"channel", b"room:1") + b"--XyZ\r\nno colon\r\n\r\nv",
                                 MULTIPART) +
                            post(b"/api/push", b"--XyZ\r\nContent-Disposition: form-data; name=\"a\r\n\r\n",
                                 MULTIPART) +
                            post(b"/api/push", part(b"channel", b"room:1"), b"multipart/form-data"),
    "0-push-binary": post(b"/api/push?channel=room%3A1&channel[]=p%3A1&event=b", b"\x00\x01\xff\"]",
                          b"application/octet-stream"),
    "0-push-binary-bad": post(b"/api/push?channel=room%3A1", b"x", b"application/octet-stream") +
                         post(b"/api/push?event=e&channel=" + b"x" * 256, b"x", b"application/octet-stream"),
    "0-reload": post(b"/admin/reload", b""),
    "0-drain": post(b"/admin/drain", b""),
    "0-head": b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    "0-http10": b"GET /healthz HTTP/1.0\r\n\r\n",
    "0-close": get(b"/healthz", b"Connection: close\r\n"),
    "0-upgrade-elsewhere": get(b"/healthz", b"Connection: Upgrade\r\nUpgrade: h2c\r\n") + get(b"/readyz"),
    "0-connect": b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    "0-ws-no-upgrade": get(b"/socket/websocket?vsn=2.0.0"),
    "0-ws-bad-version": HANDSHAKE.replace(b"Version: 13", b"Version: 8"),
    "0-ws-full": HANDSHAKE + frame(JOIN) + frame('[null,"2","phoenix","heartbeat",{}]') + frame(b"", 8),
    "0-ws-protocol": HANDSHAKE.replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Protocol: phoenix, "
                                      b"base64url.bearer.phx.dG9rZW4\r\n\r\n") + frame(JOIN),
    "0-ws-push-socket": HANDSHAKE.replace(b"/socket/", b"/push_socket/") + frame(JOIN),
    "0-bad": b"HELLO\r\n\r\n",
    # a trusted peer (127.0.0.1) may name its client: PROXY v1, v2, X-Forwarded-For
    "0-proxy-v1": b"PROXY TCP4 192.0.2.9 127.0.0.1 5555 4000\r\n" + get(b"/healthz"),
    "0-proxy-v2": b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\xc0\x00\x02\x2c\x7f\x00\x00\x01\x15\xb3\x0f\xa0" +
                  HANDSHAKE + frame(JOIN),
    "0-proxy-bad": b"PROXY TCP6 nonsense\r\n" + get(b"/healthz"),
    "0-xff": HANDSHAKE.replace(b"\r\n\r\n", b"\r\nX-Forwarded-For: 198.51.100.1, [2001:db8::1]:80\r\n\r\n") +
             frame(JOIN),
    # mode 1: frames after the handshake
    "1-join-heartbeat": frame(JOIN) + frame('[null,"2","phoenix","heartbeat",{}]'),
    "1-fragmented": frame('["1","1",', fin=False) + frame(b"ping", 9) +
                    frame('"p:1","phx_join",{"k":"v"}]', 0) + frame(b"\x03\xe8bye", 8),
    "1-ping-pong": frame(b"hello", 9) + frame(b"", 10) + frame(b"", 9, mask=b"\0\0\0\0"),
    "1-binary": frame(b"\x00\x01\x02", 2),
    "1-binary-push": frame(JOIN) + frame(b"\x00\x01\x01\x06\x04" + b"12room:1blob" + b"\x00\xff", 2) +
                     frame(b"\x00\x00\x01\x04\x01" + b"3nope" + b"e", 2),
    "1-binary-truncated": frame(b"\x00\x05\x05\x05\x05ab", 2),
    "1-binary-kind": frame(b"\x02\x01\x01ab", 2),
    "1-binary-control": frame(b"\x00\x00\x00\x01\x09theartbeat", 2),
    "1-unmasked": frame(JOIN, mask=None),
    "1-long": frame('["1","1","room:1","phx_join",{"pad":"' + "x" * 300 + '"}]'),
    # mode 2: one text frame per line
    "2-join-leave": "\n".join([JOIN, '["1","2","room:1","phx_leave",{}]',
                               '["3","3","p:1","phx_join",{"meta":1}]']).encode(),
    "2-push": "\n".join([JOIN, '["1","2","room:1","shout",{"body":"hi"}]',
                         '[null,"4","other","shout",{}]']).encode(),
    "2-heartbeat": b'[null,"1","phoenix","heartbeat",{}]',
    "2-rejoin": "\n".join([JOIN, JOIN.replace('"1","1"', '"2","2"'), '["5","5","c:1","phx_join",{}]',
                           '["6","6","d:1","phx_join",{}]', '["7","7","u:1","phx_join",{}]']).encode(),
    # mode 6: V1 objects (a handshake with no vsn)
    "6-join-push-leave": "\n".join(['{"topic":"room:1","event":"phx_join","payload":{},"ref":"1"}',
                                     '{"topic":"room:1","event":"shout","payload":{"b":1},"ref":"2"}',
                                     '{"topic":"p:1","event":"phx_join","payload":{},"ref":"3"}',
                                     '{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"4"}',
                                     '{"topic":"nope","event":"x","payload":{},"ref":null}',
                                     '{"topic":"room:1","event":"phx_leave","payload":{},"ref":"5"}']).encode(),
    "6-bad-array": b'["1","1","room:1","phx_join",{}]',
    "6-bad-fields": b'{"topic":"room:1","event":"phx_join","payload":[],"ref":1}',
    "6-no-ref": b'{"topic":"room:1","event":"phx_join","payload":{}}\n{"topic":"a\\u0000","event":"e","payload":{}}',
    "2-bad": b'{"not":"an array"}\n[null,null,"t","phx_join",[]]',
    # mode 3: /api/push JSON bodies
    "3-single": PUSH,
    "3-many": b'{"channel":["room:1","p:1","c:1","d:1","u:1","a","x"],"event":"e","data":{"n":[1.5,true,null]}}',
    "3-batch": b'[{"channel":"room:1","event":"a","data":"\\u00e9\\n"},{"channel":"c:1","event":"b","data":2}]',
    "3-invalid": b'{"channel":"room:1","data":1}',
    # mode 4: /api/push forms
    "4-form": b"channel=room%3A1&event=e&data=%7B%22a%22%3A1%7D",
    "4-form-list": b"channel[]=room:1&channel[]=p:1&channel=x&event=e+v&data=d",
    "4-form-nul": b"channel=room%3A1&event=e&data=%7B%00a%22%13",
    # mode 5: request targets
    "5-topics": b"/api/topics/room%3A1",
    "5-presence": b"/api/presence/p:1",
    "5-query": b"/socket/websocket?vsn=2.0.0&token=abc&vsn=1",
    "5-healthz": b"/healthz?x=%41",
    # LongPoll: raw requests (open, preflight, methods, the push_socket mount without it)
    "0-lp-open": get(b"/socket/longpoll?vsn=2.0.0&token=null"),
    "0-lp-open-v1": get(b"/socket/longpoll?token=undefined", b"X-Phoenix-AuthToken: abc\r\n"),
    "0-lp-options": b"OPTIONS /socket/longpoll HTTP/1.1\r\nHost: x\r\nOrigin: http://a\r\n\r\n",
    "0-lp-put": b"PUT /socket/longpoll HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    "0-lp-post-no-token": post(b"/socket/longpoll", JOIN.encode(), b"application/x-ndjson"),
    "0-lp-header-token": get(b"/socket/longpoll", b"X-Phoenix-Longpoll-Token: 00000000000000ff" +
                             b"0" * 32 + b"\r\n"),
    "0-lp-push-socket": get(b"/push_socket/longpoll?vsn=2.0.0"),
    # mode 8: ndjson POSTs to the harness's session (mode byte '8')
    "8-lp-join-push": (JOIN + '\n["1","2","room:1","ev",{"a":1}]\n["1","3","room:1","phx_leave",{}]\n').encode(),
    "8-lp-heartbeat": b'[null,"9","phoenix","heartbeat",{}]\r\n\r\n[null,"10","phoenix","heartbeat",{}]',
    "8-lp-binary": JOIN.encode() + b"\n" + base64.b64encode(b"\x00\x01\x01\x06\x02" + b"11room:1ev" + b"\xff\x00"),
    "8-lp-binary-bad": JOIN.encode() + b"\nAAEBBgJ=\n!!!!\n",
    "8-lp-bad-json": b'["1","1","room:1","phx_join",{}\n{"topic":"x"}',
    "8-lp-many": "\n".join(['[null,"%d","phoenix","heartbeat",{}]' % i for i in range(25)]).encode(),
    "8-lp-v1-object": b'{"topic":"room:1","event":"phx_join","payload":{},"ref":"1"}',
    # mode 9: the body is one text message
    "9-lp-text": JOIN.encode(),
    "9-lp-text-two-lines": (JOIN + "\n" + JOIN).encode(),
    # mode 10 (mode byte 'J'): the token of a poll
    "J-lp-forged": b"0000000000000001" + b"ab" * 16,
    "J-lp-short": b"abc",
    "J-lp-empty": b"",
    "J-lp-upper": b"0000000000000001" + b"AB" * 16,
    "J-lp-encoded": b"%30%30" + b"0" * 46,
}

ws = {
    # byte 0: where the stream is cut; byte 1: bit 0 = stop after each callback
    "frames": b"\x07\x00" + frame("hello") + frame(b"p", 9) + frame(b"", 10) + frame(b"\x03\xe8ok", 8),
    "fragmented": b"\x20\x01" + frame("frag", fin=False) + frame(b"", 9) + frame("men", 0, fin=False) +
                  frame("ted", 0),
    "lengths": b"\x99\x00" + frame("x" * 125) + frame("y" * 126) + frame(b"z" * 300, 2),
    "empty": b"\x00\x01" + frame("") + frame(b"", 2) + frame("", fin=False) + frame("", 0),
    "utf8": b"\x03\x00" + frame("\u20ac\U0001F600".encode()) + frame(b"\xe2", fin=False) + frame(b"\x82\xac", 0),
    "bad-close": b"\x05\x00" + frame(b"\x03\xed", 8),
    "unmasked": b"\x01\x00" + frame("x", mask=None),
    "toobig": b"\x02\x00" + frame(b"q" * 5000, 2),
    "len64": b"\x0b\x01" + bytes([0x81, 0xFF]) + struct.pack(">Q", 10) + KEY + b"0123456789",
}

config = {
    "full.lua": b"""listen = { host = '127.0.0.1', port = 0 }
api = { token = 'secret' }
mounts = { '/socket', '/' }
limits = { max_message_bytes = 4096, max_body_bytes = 1000, max_topics_per_socket = 5 }
timeouts = { ws_idle_ms = 1000, http_idle_ms = 500, ws_close_ms = 100 }
log = { level = 'debug' }
reload = { recheck_joins = true }
drain = { timeout_ms = 1000, announce_ms = 10, disconnect_sockets = false }
presence = { batch_ms = 5 }
topics = { { match = 'p:*', presence = true, throttle_ms = 5, coalesce = 'latest' },
           { match = '*', tracked = false, on_overflow = 'drop_oldest', max_queue_bytes = 100 } }
scripts = { 'policy.lua', budget_ms = 20, watch = false }
plugins = { jwt = { secret = 'x', assigns_claims = { 'a', 'b' } }, big_topics = { patterns = { 'p:*' } },
            topic_acl = { rules = { { match = 'u:{id}', allow = { role = 'admin', n = 1, ok = true } } } },
            rate_limit = true }
""",
    "code.lua": b"""local base = tonumber(os.getenv('NOPE') or '4000')
local function mount(n) return '/' .. n:rep(2) end
listen = { port = base + math.floor(1.5) }
mounts = {}
for i, n in ipairs({ 'a', 'b' }) do mounts[#mounts + 1] = mount(n) end
table.sort(mounts)
assert(type(os.time()) == 'number', 'time')
function helper() return string.format('%d', 1) end
""",
    "empty.lua": b"",
    "bad-syntax.lua": b"listen = {\nport = = 1\n}\n",
    "bad-type.lua": b"listen = { port = 'x' }\nlimits = { foo = 1 }\n",
    "bad-unknown.lua": b"limitz = {}\n",
    "bad-call.lua": b"os.execute('true')\nio.write('x')\n",
    "bad-error.lua": b"error({})\n",
}


# fuzz_httpc: byte 0 the cut, byte 1 flags (bit 0 HEAD, bit 1 the server
# closes after, bits 2-3 the limit: 64, 512, 4096, 1 MiB), then the bytes.
def answer(data, head=False, eof=False, limit=2, cut=5):
    return bytes([cut, (1 if head else 0) | (2 if eof else 0) | limit << 2]) + data


OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
httpc = {
    "length": answer(OK),
    "length-eof": answer(OK, eof=True, cut=9),
    "chunked": answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n"
                      b"6\r\n world\r\n0\r\nTrailer: t\r\n\r\n", cut=11),
    "until-close": answer(b"HTTP/1.1 200 OK\r\nX-A:  spaced  \r\n\r\nthe rest", eof=True),
    "interim": answer(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK),
    "head": answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", head=True),
    "no-content": answer(b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\n\r\n"),
    "http10": answer(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    "http10-keepalive": answer(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"),
    "close": answer(b"HTTP/1.1 500 Oops\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno"),
    "junk-after": answer(OK + b"HTTP/1.1 200 OK\r\n"),
    "many-headers": answer(b"HTTP/1.1 200 OK\r\n" + b"".join(b"h%d: v\r\n" % i for i in range(101)) +
                           b"\r\n", limit=3),
    "too-large": answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100, limit=0),
    "bad-status": answer(b"HTTP/1.1 2x0 OK\r\n\r\n"),
    "bad-chunk": answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
    "dup-length": answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nok"),
    "switching": answer(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"),
    "partial": answer(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort", eof=True),
    "empty": answer(b"", eof=True, cut=0),
}


def write(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name in os.listdir(d):
        if not name.startswith(("crash-", "regress-")):
            os.remove(os.path.join(d, name))
    for name, data in seeds.items():
        if target == "fuzz_server":
            data = name[0].encode() + data  # the mode byte: '0'..'9', 'J' (% 16)
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


write("fuzz_server", server)
write("fuzz_ws", ws)
write("fuzz_config", config)
write("fuzz_httpc", httpc)
