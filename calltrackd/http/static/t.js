/* calltrackd site snippet: shows each visitor a tracking number of their own.
 *   <script src="https://TRACKING-HOST/t.js" data-key="pk_acme" async></script>
 * Options (data-* attributes): data-key (required: the tracker's public key),
 * data-class (elements whose phone number is swapped; default "calltrackd-phone"),
 * data-api (API origin; default: where this script came from).
 * It sends the landing page's address (with its query) and the referrer; calltrackd names the
 * traffic source. window.calltrackdCustom (e.g. {product_id: "42"}) goes with every request
 * and is re-sent when the page changes it. Any failure leaves the page as it was.
 * Exposes window.calltrackd = {sessionId, number, kind, visitorId, setCustom(obj)}.
 */
(function () {
  "use strict";
  try {
    var script = document.currentScript || document.querySelector("script[data-key]");
    if (!script) return;
    var key = script.getAttribute("data-key");
    if (!key) return;
    var cls = script.getAttribute("data-class") || "calltrackd-phone";
    var api = (script.getAttribute("data-api") || new URL(script.src, location.href).origin)
      .replace(/\/+$/, "");
    var store = window.sessionStorage;
    var SID = "calltrackd.sid", VISIT = "calltrackd.visit", VID = "calltrackd.vid";
    var state = window.calltrackd = { sessionId: null, number: null, kind: null };
    var timer = null, sentCustom = null;

    function get(k) { try { return store.getItem(k); } catch (e) { return null; } }
    function set(k, v) { try { store.setItem(k, v); } catch (e) { /* private mode */ } }
    function cookie(name) {
      var m = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
      return m ? decodeURIComponent(m[1]) : null;
    }

    // a first-party visitor id (cookie and localStorage), so a returning visitor is known
    function visitorId() {
      var id = cookie("_ctd_vid"), local = null;
      try { local = window.localStorage.getItem(VID); } catch (e) { local = null; }
      id = id || local;
      if (!/^[A-Za-z0-9_-]{8,64}$/.test(id || "")) {
        var b = new Uint8Array(16);
        crypto.getRandomValues(b);
        id = "v" + [].map.call(b, function (x) { return (x + 256).toString(16).slice(1); }).join("");
      }
      try { window.localStorage.setItem(VID, id); } catch (e) { /* private mode */ }
      document.cookie = "_ctd_vid=" + id + "; path=/; max-age=34560000; SameSite=Lax";
      return id;
    }

    // GA4's session id: _ga_<container> = "GS1.1.<session>.<n>..." or "GS2.1.s<session>$o<n>..."
    function gaSession() {
      var m = document.cookie.match(/(?:^|; )_ga_[A-Za-z0-9]+=GS\d\.\d\.s?(\d+)/);
      return m ? m[1] : null;
    }

    function bare(host) { return host.replace(/^www\./, ""); }

    // a new arrival: tags or a click id in the address, or a referrer from another site
    function arrived() {
      if (/(^|[?&])(utm_[a-z]+|[a-z_]*clid|gbraid|wbraid|li_fat_id|epik|srsltid|mc_cid|_hsenc|mkt_tok)=/i
          .test(location.search)) return true;
      var ref = "";
      try { ref = document.referrer ? bare(new URL(document.referrer).hostname) : ""; } catch (e) { ref = ""; }
      var own = bare(location.hostname);
      return !!ref && ref !== own && !own.endsWith("." + ref) && !ref.endsWith("." + own);
    }

    // UTM parameters, the landing page and its referrer are remembered for the whole visit
    function visit() {
      var saved = null;
      try { saved = JSON.parse(get(VISIT) || "null"); } catch (e) { saved = null; }
      var q = new URLSearchParams(location.search), utm = {};
      ["utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content"].forEach(function (n) {
        var v = q.get(n);
        if (v) utm[n] = v;
      });
      if (!saved || arrived()) {
        saved = { utm: utm, referrer: document.referrer || null, landing_page: location.href };
        set(VISIT, JSON.stringify(saved));
      }
      return saved;
    }

    function custom() {
      var c = window.calltrackdCustom;
      return c && typeof c === "object" ? JSON.stringify(c) : null;
    }

    function body() {
      var v = visit(), b = {
        tracker: key, session_id: get(SID), referrer: v.referrer,
        landing_page: v.landing_page, ym_uid: cookie("_ym_uid"),
        client_id: cookie("_ga"), visitor_id: state.visitorId, ga_session_id: gaSession(),
        custom: window.calltrackdCustom || null
      };
      for (var n in v.utm) b[n] = v.utm[n];
      sentCustom = custom();
      return b;
    }

    function post(path, payload) {
      return fetch(api + path, {
        method: "POST", mode: "cors", credentials: "omit", keepalive: true,
        headers: { "Content-Type": "application/json" },
        body: payload ? JSON.stringify(payload) : "{}"
      }).then(function (r) {
        if (!r.ok) throw new Error("calltrackd: HTTP " + r.status);
        // the server's clock: the visitor's may be off by minutes
        var now = Date.parse(r.headers.get("Date") || "");
        return r.json().then(function (a) { a.now = isNaN(now) ? Date.now() : now; return a; });
      });
    }

    // Renders `number` (E.164) in the digit pattern of `shown` ("+7 (499) 000-00-00").
    function styled(shown, number) {
      var digits = number.replace(/\D/g, ""), old = shown.replace(/\D/g, "");
      if (old.length === digits.length && shown.indexOf("+") < 0 && old.charAt(0) === "8" &&
          digits.charAt(0) === "7") {
        digits = "8" + digits.slice(1);  // Russia and Kazakhstan dial +7 as 8 at home
      } else if (old.length !== digits.length) {
        if (old.length === digits.length - 1 && shown.indexOf("+") < 0) {
          digits = digits.slice(1);  // national style without the country code
        } else {
          return number;
        }
      }
      var i = 0;
      return shown.replace(/\d/g, function () { return digits.charAt(i++); });
    }

    function swap(number) {
      var nodes = document.getElementsByClassName(cls);
      for (var n = 0; n < nodes.length; n++) {
        var el = nodes[n];
        // the marked element's link: itself, one around it or ones inside it
        var links = [].slice.call(el.getElementsByTagName("a"));
        var outer = el.closest && el.closest("a");
        if (outer) links.push(outer);
        links.forEach(function (a) {
          if (/^tel:/i.test(a.getAttribute("href") || "")) a.setAttribute("href", "tel:" + number);
        });
        var walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT, null);
        var t;
        while ((t = walker.nextNode())) {
          if (/\d{2}/.test(t.nodeValue)) {
            t.nodeValue = t.nodeValue.replace(/\+?\d[\d\s().\-]{5,}\d/, function (m) {
              return styled(m, number);
            });
          }
        }
      }
    }

    function apply(a) {
      if (!a || !a.number) return;
      state.sessionId = a.session_id; state.number = a.number; state.kind = a.kind;
      set(SID, a.session_id);
      if (document.readyState === "loading") {
        document.addEventListener("DOMContentLoaded", function () { swap(a.number); });
      } else {
        swap(a.number);
      }
      if (timer) clearTimeout(timer);
      // a third of the reservation, so a slow ping still finds it held; a second at least
      var ttl = Date.parse(a.expires_at) - a.now;
      timer = setTimeout(ping, Math.max(1000, Math.min(60000, isNaN(ttl) ? 60000 : ttl / 3)));
    }

    function ping() {
      if (!state.sessionId || document.visibilityState !== "visible") return;
      var c = custom(), changed = c !== null && c !== sentCustom;
      if (changed) sentCustom = c;
      post("/v1/sessions/" + encodeURIComponent(state.sessionId) + "/ping",
           changed ? { custom: window.calltrackdCustom } : null)
        .then(apply, function () { post("/v1/sessions", body()).then(apply, function () {}); });
    }

    // the page attached other data (a product viewed in a single-page shop): send it now
    state.setCustom = function (obj) { window.calltrackdCustom = obj; ping(); };
    setInterval(function () {
      var c = custom();
      if (c !== null && c !== sentCustom) ping();
    }, 2000);

    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "visible") ping();
    });
    state.visitorId = visitorId();
    state.ready = post("/v1/sessions", body()).then(apply, function () { /* page untouched */ });
  } catch (e) { /* never break the page */ }
})();
