/* calltrackd dashboard: a recorded call's player, for the call list and the call page.
 *
 * An <audio src> and an <a download> cannot send the bearer token, so the player asks
 * GET /v1/calls/<id>/recording/link (with the token) for a signed URL of this origin
 * that opens that one recording for a quarter of an hour, and points both at it: the
 * browser streams the WAV with Range requests (preload="none": nothing is fetched until
 * play is pressed). A link that expired while the page stayed open is asked again: on
 * the player's error (resuming where it was) and before a download.
 */
(function () {
  "use strict";

  // deps: { el, api, secs } of app.js; returns the element to show for the call
  function player(call, deps, options) {
    var el = deps.el;
    var rec = call.recording;
    options = options || {};
    if (!rec) {
      return el("span", { class: "muted not-recorded", "data-recording": "none",
                          text: options.long ? "This call was not recorded." : "not recorded" });
    }
    var wav = !rec.format || rec.format === "wav";
    var ext = wav ? "wav" : rec.format;
    var box = el("div", { class: "player" + (options.long ? " long" : ""),
                          "data-recording": call.id,
                          // a click on the player is not a click on the call's row
                          onclick: function (ev) { ev.stopPropagation(); } });
    // in the list the player's own menu gives way to the timeline (the download link is
    // beside it); on the call's page it stays, with its playback speed
    var audio = wav ? el("audio", { controls: true, preload: "none",
                                    controlslist: options.long ? null : "nodownload noplaybackrate",
                                    "aria-label": "Recording of the call" }) : null;
    var download = el("a", { class: "download", text: "Download", role: "button",
                             download: call.id + "." + ext });
    var length = el("span", { class: "rec-len", title: "Length of the recording",
                              text: deps.secs(rec.seconds) });
    var meta = options.long
      ? el("span", { class: "rec-meta" }, el("span", {}, "Length ", length),
           el("span", { class: "muted", text: ext.toUpperCase() + ", " +
                        Math.max(1, Math.round(rec.bytes / 1024)) + " KiB" +
                        (wav ? " · caller on the left, your team on the right" : "") }),
           download)
      : el("span", { class: "rec-meta" }, length, download);
    // when the link expires by this browser's clock (expires_in: a clock set wrong does
    // not matter), with half a minute to spare
    var until = 0;
    var asking = null;

    function valid() { return Date.now() < until; }

    function fresh() {
      if (valid()) return Promise.resolve();
      if (!asking) {
        asking = deps.api("/v1/calls/" + encodeURIComponent(call.id) + "/recording/link")
          .then(function (link) {
            until = Date.now() + (link.expires_in - 30) * 1000;
            download.setAttribute("href", link.url);
            if (audio) audio.setAttribute("src", link.url);
          })
          .catch(function (e) {
            box.appendChild(el("span", { class: "error", text: "Recording: " + e.message }));
          })
          .then(function () { asking = null; });
      }
      return asking;
    }

    if (audio) {
      box.appendChild(audio);
      audio.addEventListener("error", function () {
        if (valid()) return;  // not the link: the player shows the browser's error
        var at = audio.currentTime;
        var playing = !audio.paused;
        fresh().then(function () {
          if (!valid()) return;  // no new link (its error is shown): no retry loop
          audio.addEventListener("loadedmetadata", function () {
            audio.currentTime = at;
            if (playing) audio.play().catch(function () { return null; });
          }, { once: true });
          audio.load();
        });
      });
    } else {
      box.appendChild(el("span", { class: "muted", title: rec.note || "",
                                   text: "kept as " + ext + " (" + (rec.note || "not converted") + ")" }));
    }
    box.appendChild(meta);
    download.addEventListener("click", function (ev) {
      if (valid()) return;
      ev.preventDefault();
      fresh().then(function () { if (valid()) download.click(); });
    });
    fresh();
    return box;
  }

  window.calltrackdPlayer = player;
})();
