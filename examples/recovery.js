/* HeraldRecovery: a phoenix.js channel that picks up where it left off.
 *
 * On a topic whose policy keeps a history (history_size > 0), herald gives
 * every message an offset and every join reply the stream's epoch and top
 * offset. This helper remembers {epoch, offset of the last message seen}
 * and sends it as `since` with every (re)join phoenix.js makes, so that
 * after a reconnect herald replays what was missed, in order, before any
 * live message; or answers recovered: false when it cannot (onGap: refetch
 * the state). Messages it has already seen are not delivered twice.
 *
 * One file, no build step: a <script src="recovery.js"> after phoenix.js
 * defines the global HeraldRecovery; in Node, require("./recovery.js").
 *
 *   const ch = HeraldRecovery.channel(socket, "room:1", {
 *     onMessage(event, data, offset, payload) { ... },  // each message, once, in order
 *     onJoin(reply) { ... },       // every ok join reply (reply.epoch, reply.offset)
 *     onRecovered(reply) { ... },  // a rejoin got recovered: true; the missed messages follow
 *     onGap(reply) { ... },        // a rejoin got recovered: false: refetch the state
 *     params: { token: "..." },    // join params of your own (an object or a function)
 *     since: { epoch, offset },    // optional: resume from a saved position
 *   });
 *   ch.join();
 *   ch.recovery.since()            // {epoch, offset} to save (e.g. in sessionStorage), or null
 *
 * Herald's wire format (README.md, "History and recovery"): a message
 * arrives as the channel event "msg" with {data, event, offset}; the join
 * reply's response has {epoch, offset} and, when the join asked with since,
 * "recovered": true or false. */
(function (root, factory) {
  if (typeof module === "object" && module.exports) module.exports = factory();
  else root.HeraldRecovery = factory();
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";

  function call(fn, args) {
    if (typeof fn === "function") fn.apply(null, args);
  }

  function channel(socket, topic, opts) {
    opts = opts || {};
    var own = typeof opts.params === "function" ? opts.params : function () { return opts.params || {}; };
    var epoch = opts.since ? opts.since.epoch : null;  /* null: no position yet */
    var last = opts.since ? opts.since.offset : 0;     /* offset of the last message seen */

    /* phoenix.js calls this for every join it sends, rejoins included. */
    function params() {
      var p = {}, o = own() || {};
      for (var k in o) if (Object.prototype.hasOwnProperty.call(o, k)) p[k] = o[k];
      if (epoch !== null) p.since = { epoch: epoch, offset: last };
      return p;
    }

    var ch = socket.channel(topic, params);
    ch.recovery = {
      since: function () { return epoch === null ? null : { epoch: epoch, offset: last }; },
    };

    /* A hook on the join push fires for every reply to it, rejoins too. */
    ch.joinPush.receive("ok", function (reply) {
      if (reply && typeof reply.epoch === "string" && typeof reply.offset === "number") {
        epoch = reply.epoch;
        /* recovered: true keeps our position (the replay follows); after
         * recovered: false, or a join without since, we start at the top. */
        if (reply.recovered !== true) last = reply.offset;
      }
      call(opts.onJoin, [reply]);
      if (reply && reply.recovered === true) call(opts.onRecovered, [reply]);
      else if (reply && reply.recovered === false) call(opts.onGap, [reply]);
    });

    ch.on("msg", function (payload) {
      if (!payload) return;
      var offset = payload.offset;
      if (typeof offset === "number" && epoch !== null) {
        if (offset <= last) return; /* seen already */
        last = offset;
      }
      call(opts.onMessage, [payload.event, payload.data, offset, payload]);
    });
    return ch;
  }

  return { channel: channel };
});
