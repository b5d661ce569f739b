/* calltrackd dashboard: plain JavaScript over the daemon's own HTTP API.
 *
 * Pages are views of hash routes (#/overview, #/sources?channel=paid, #/calls, #/calls/<id>,
 * #/pools, #/health). Every figure comes from the API a script would use (/v1/reports,
 * /v1/calls, /v1/stats, /v1/admin/webhooks, /healthz); nothing is computed here that the
 * API does not say, except sums of the rows it returned. Text from the API is always set
 * as textContent, never parsed as HTML.
 */
(function () {
  "use strict";

  var TOKEN_KEY = "calltrackd.token";
  var state = { token: sessionStorage.getItem(TOKEN_KEY), me: null, tracker: null, days: 7 };
  var charts = [];
  var COLORS = {
    paid: "#4e79a7", organic: "#59a14f", social: "#e15759", referral: "#f28e2b",
    email: "#b07aa1", direct: "#76b7b2", other: "#9c755f", default: "#bab0ac", none: "#d4d4d4"
  };
  var EXTRA = ["#edc948", "#ff9da7", "#86bcb6", "#8cd17d", "#b6992d", "#499894", "#d37295"];
  var LEVELS = ["channel", "source", "campaign", "term"];

  // -- small helpers ------------------------------------------------------------------

  function el(tag, attrs) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) return;
      if (k === "text") node.textContent = String(v);
      else if (k === "class") node.className = v;
      else if (k.slice(0, 2) === "on") node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    });
    for (var i = 2; i < arguments.length; i++) {
      var c = arguments[i];
      if (c === null || c === undefined) continue;
      (Array.isArray(c) ? c : [c]).forEach(function (x) {
        node.appendChild(typeof x === "string" || typeof x === "number"
          ? document.createTextNode(String(x)) : x);
      });
    }
    return node;
  }

  function page() { return document.getElementById("page"); }

  function clear() {
    charts.forEach(function (c) { c.destroy(); });
    charts = [];
    var p = page();
    while (p.firstChild) p.removeChild(p.firstChild);
    return p;
  }

  function ApiError(status, message) { this.status = status; this.message = message; }

  function api(path, options) {
    options = options || {};
    var headers = { "Authorization": "Bearer " + state.token };
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    return fetch(path, {
      method: options.method || "GET", headers: headers,
      body: options.body !== undefined ? JSON.stringify(options.body) : undefined
    }).then(function (r) {
      if (options.raw) return r;
      return r.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        if (r.status === 401) { signOut("The token was not accepted."); }
        if (!r.ok && !options.allowError) {
          var msg = data && data.error ? data.error.message : ("HTTP " + r.status);
          throw new ApiError(r.status, msg);
        }
        return options.allowError ? { status: r.status, data: data } : data;
      });
    });
  }

  function tz() {
    var t = currentTracker();
    return (t && t.timezone) || "UTC";
  }

  function currentTracker() {
    if (!state.me) return null;
    for (var i = 0; i < state.me.trackers.length; i++) {
      if (state.me.trackers[i].id === state.tracker) return state.me.trackers[i];
    }
    return state.me.trackers[0] || null;
  }

  // the day (YYYY-MM-DD) of a moment in a time zone: the reports count days in the zone
  // their answer names (the tracker's), and the charts label them so
  function dayOf(date, zone) {
    var parts = new Intl.DateTimeFormat("en-CA", {
      timeZone: zone || tz(), year: "numeric", month: "2-digit", day: "2-digit"
    }).formatToParts(date);
    var get = function (t) { return parts.filter(function (p) { return p.type === t; })[0].value; };
    return get("year") + "-" + get("month") + "-" + get("day");
  }

  // a moment in the tracker's time zone; with `zoned`, followed by the zone's offset
  // (e.g. "01 Dec 2026, 13:04:05 GMT+3")
  function fmtTime(iso, zoned) {
    if (!iso) return "—";
    var opts = { timeZone: tz(), year: "numeric", month: "short", day: "2-digit",
                 hour: "2-digit", minute: "2-digit", second: "2-digit" };
    if (zoned) opts.timeZoneName = "short";
    return new Intl.DateTimeFormat("en-GB", opts).format(new Date(iso));
  }

  // hours:minutes of a moment in the tracker's time zone
  function fmtHour(iso) {
    return new Intl.DateTimeFormat("en-GB", { timeZone: tz(), hour: "2-digit", minute: "2-digit",
                                              hourCycle: "h23" }).format(new Date(iso));
  }

  // today (YYYY-MM-DD) in the tracker's time zone
  function today() { return dayOf(new Date(), tz()); }

  // wall-clock time minus UTC (ms) in a zone at a moment
  function zoneOffset(ms, zone) {
    var parts = new Intl.DateTimeFormat("en-CA", {
      timeZone: zone, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit"
    }).formatToParts(new Date(ms));
    var v = {};
    parts.forEach(function (x) { v[x.type] = Number(x.value); });
    return Date.UTC(v.year, v.month - 1, v.day, v.hour, v.minute, v.second) -
      Math.floor(ms / 1000) * 1000;
  }

  // the moment a day (YYYY-MM-DD) begins in a zone
  function localMidnight(day, zone) {
    var wall = Date.parse(day + "T00:00:00Z");
    var t = wall - zoneOffset(wall, zone);
    return new Date(wall - zoneOffset(t, zone));
  }

  // the period: today and the days before it, in the tracker's zone, up to now
  function period() {
    var until = new Date();
    var first = new Date(Date.parse(dayOf(until, tz()) + "T00:00:00Z") -
                         (state.days - 1) * 86400000);
    return { since: localMidnight(first.toISOString().slice(0, 10), tz()), until: until };
  }

  function periodQuery() {
    var p = period();
    return "since=" + encodeURIComponent(p.since.toISOString()) +
      "&until=" + encodeURIComponent(p.until.toISOString());
  }

  function trackerQuery() { return "tracker=" + encodeURIComponent(state.tracker); }

  function num(v, digits) {
    if (v === null || v === undefined) return "—";
    if (typeof v !== "number") return String(v);
    return v.toLocaleString("en-US", { maximumFractionDigits: digits === undefined ? 2 : digits });
  }

  function pct(v) { return v === null || v === undefined ? "—" : (v * 100).toFixed(1) + "%"; }

  function secs(v) {
    if (v === null || v === undefined) return "—";
    var s = Math.round(v);
    return Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
  }

  function color(name, i) {
    return COLORS[name] || EXTRA[i % EXTRA.length];
  }

  function callChannel(c) {
    var a = c.attribution || {};
    if (a.channel) return a.channel;
    return a.kind || "none";
  }

  function parseHash() {
    var h = location.hash.replace(/^#\/?/, "");
    var q = h.indexOf("?");
    var path = q >= 0 ? h.slice(0, q) : h;
    var params = new URLSearchParams(q >= 0 ? h.slice(q + 1) : "");
    var parts = path.split("/").filter(Boolean);
    return { page: parts[0] || "overview", arg: parts[1] ? decodeURIComponent(parts[1]) : null,
             params: params };
  }

  function chart(canvas, config) {
    config.options = Object.assign({ responsive: true, maintainAspectRatio: false,
                                     animation: false }, config.options || {});
    var c = new window.Chart(canvas, config);
    charts.push(c);
    return c;
  }

  function tile(label, value, id) {
    return el("div", { class: "tile", "data-tile": id },
              el("div", { class: "value", text: value }), el("div", { class: "label", text: label }));
  }

  function failure(err) {
    clear().appendChild(el("div", { class: "card error", role: "alert",
                                    text: "Could not load: " + (err && err.message || err) }));
  }

  // -- sign-in -------------------------------------------------------------------------

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    state.me = null;
    document.getElementById("top").hidden = true;
    clear();
    var form = document.getElementById("signin");
    form.hidden = false;
    var err = document.getElementById("signin-error");
    err.hidden = !message;
    err.textContent = message || "";
  }

  function start() {
    return api("/v1/me").then(function (me) {
      state.me = me;
      document.getElementById("signin").hidden = true;
      document.getElementById("top").hidden = false;
      var select = document.getElementById("tracker");
      while (select.firstChild) select.removeChild(select.firstChild);
      me.trackers.forEach(function (t) {
        select.appendChild(el("option", { value: t.id, text: t.id }));
      });
      var saved = sessionStorage.getItem("calltrackd.tracker");
      state.tracker = me.trackers.some(function (t) { return t.id === saved; })
        ? saved : (me.trackers[0] ? me.trackers[0].id : null);
      select.value = state.tracker;
      document.querySelector('nav a[data-page="health"]').hidden = me.role !== "admin";
      route();
    });
  }

  // -- Overview ------------------------------------------------------------------------

  // the days of the period in the zone, with any other day the report returned
  function daysOfPeriod(zone, rows) {
    var p = period();
    var out = [];
    var add = function (d) { if (d && out.indexOf(d) < 0) out.push(d); };
    for (var t = p.since.getTime(); t <= p.until.getTime() + 1; t += 3600000) {
      add(dayOf(new Date(t), zone));
    }
    add(dayOf(p.until, zone));
    rows.forEach(function (r) { add(r.key.day); });
    return out.sort();
  }

  function sum(rows, field) {
    return rows.reduce(function (a, r) { return a + (r[field] || 0); }, 0);
  }

  function overview() {
    var p = clear();
    p.appendChild(el("h1", { text: "Overview" }));
    return api("/v1/reports?" + trackerQuery() + "&" + periodQuery() + "&group_by=day,channel")
      .then(function (data) {
        var rows = data.rows || [];
        var spend = rows.some(function (r) { return r.spend !== null && r.spend !== undefined; })
          ? sum(rows, "spend") : null;
        var qualified = sum(rows, "qualified");
        p.appendChild(el("div", { class: "tiles" },
          tile("Calls", num(sum(rows, "calls"), 0), "calls"),
          tile("Answered", num(sum(rows, "answered"), 0), "answered"),
          tile("Missed", num(sum(rows, "missed"), 0), "missed"),
          tile("Qualified", num(qualified, 0), "qualified"),
          tile("First-time callers", num(sum(rows, "first_time"), 0), "first_time"),
          tile("Spend", spend === null ? "—" : num(spend), "spend"),
          tile("Cost per lead", spend === null || !qualified ? "—" : num(spend / qualified), "cpl")));
        var zone = data.timezone || "UTC";  // the zone the report counted its days in
        var days = daysOfPeriod(zone, rows);
        var channels = [];
        rows.forEach(function (r) {
          var c = r.key.channel || "none";
          if (channels.indexOf(c) < 0) channels.push(c);
        });
        var byChannel = channels.map(function (c, i) {
          return {
            label: c, backgroundColor: color(c, i), stack: "calls",
            data: days.map(function (d) {
              return sum(rows.filter(function (r) {
                return r.key.day === d && (r.key.channel || "none") === c;
              }), "calls");
            })
          };
        });
        var perDay = function (field) {
          return days.map(function (d) {
            return sum(rows.filter(function (r) { return r.key.day === d; }), field);
          });
        };
        var c1 = el("canvas", { id: "chart-channels", "aria-label": "Calls per day by channel" });
        var c2 = el("canvas", { id: "chart-answered", "aria-label": "Answered and missed calls per day" });
        p.appendChild(el("div", { class: "charts" },
          el("div", { class: "card" },
             el("h2", { text: "Calls per day by channel (days in " + zone + ")" }),
             el("div", { class: "chart" }, c1)),
          el("div", { class: "card" },
             el("h2", { text: "Answered and missed per day (" + zone + ")" }),
             el("div", { class: "chart" }, c2))));
        var stacked = { x: { stacked: true }, y: { stacked: true, beginAtZero: true,
                                                     ticks: { precision: 0 } } };
        chart(c1, { type: "bar", data: { labels: days, datasets: byChannel },
                    options: { scales: stacked } });
        chart(c2, { type: "bar", data: { labels: days, datasets: [
          { label: "answered", data: perDay("answered"), backgroundColor: "#59a14f" },
          { label: "missed", data: perDay("missed"), backgroundColor: "#e15759" },
          { label: "qualified", data: perDay("qualified"), type: "line", borderColor: "#4e79a7",
            backgroundColor: "#4e79a7" },
          { label: "first-time", data: perDay("first_time"), type: "line", borderColor: "#f28e2b",
            backgroundColor: "#f28e2b" }
        ] }, options: { scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } } });
      });
  }

  // -- Sources -------------------------------------------------------------------------

  function sourcesHash(filters) {
    var q = new URLSearchParams();
    LEVELS.forEach(function (l) { if (filters[l] !== undefined) q.set(l, filters[l]); });
    var s = q.toString();
    return "#/sources" + (s ? "?" + s : "");
  }

  var REPORT_COLUMNS = [
    ["visitors", "Visitors", 0], ["coverage", "Coverage", "pct"], ["calls", "Calls", 0],
    ["answered", "Answered", 0], ["missed", "Missed", 0], ["qualified", "Qualified", 0],
    ["first_time", "First-time", 0], ["spend", "Spend", 2], ["cpl", "CPL", 2],
    ["revenue", "Revenue", 2], ["roi", "ROI", "pct"]
  ];

  function cell(row, col) {
    var v = row[col[0]];
    return el("td", { class: "num", text: col[2] === "pct" ? pct(v) : num(v, col[2]) });
  }

  function sources(route) {
    var p = clear();
    var filters = {};
    LEVELS.forEach(function (l) { if (route.params.has(l)) filters[l] = route.params.get(l); });
    var depth = LEVELS.filter(function (l) { return filters[l] !== undefined; }).length;
    var level = LEVELS[Math.min(depth, LEVELS.length - 1)];
    p.appendChild(el("h1", { text: "Sources" }));
    var crumbs = el("div", { class: "crumbs" }, el("a", { href: "#/sources", text: "All channels" }));
    var walked = {};
    LEVELS.slice(0, depth).forEach(function (l) {
      walked[l] = filters[l];
      crumbs.appendChild(el("span", { text: "›" }));
      crumbs.appendChild(el("a", { href: sourcesHash(Object.assign({}, walked)),
                                   text: filters[l] || "(none)" }));
    });
    p.appendChild(crumbs);
    var q = trackerQuery() + "&" + periodQuery() + "&group_by=" + level;
    LEVELS.slice(0, depth).forEach(function (l) {
      if (l !== level) q += "&" + l + "=" + encodeURIComponent(filters[l]);
    });
    return api("/v1/reports?" + q).then(function (data) {
      var rows = (data.rows || []).slice().sort(function (a, b) { return b.calls - a.calls; });
      var head = el("tr", {}, el("th", { text: level }),
                    REPORT_COLUMNS.map(function (c) { return el("th", { class: "num", text: c[1] }); }));
      var body = el("tbody", {});
      rows.forEach(function (r) {
        var value = r.key[level];
        var label = value === null || value === undefined || value === "" ? "(none)" : String(value);
        var deeper = depth < LEVELS.length - 1 || level !== LEVELS[LEVELS.length - 1];
        var next = Object.assign({}, filters);
        next[level] = value === null || value === undefined ? "" : String(value);
        var first = deeper && LEVELS.indexOf(level) < LEVELS.length - 1
          ? el("td", {}, el("a", { href: sourcesHash(next), "data-drill": label, text: label }))
          : el("td", { text: label });
        body.appendChild(el("tr", { "data-key": label }, first,
                            REPORT_COLUMNS.map(function (c) { return cell(r, c); })));
      });
      var total = {};
      ["visitors", "calls", "answered", "missed", "qualified", "first_time", "revenue"]
        .forEach(function (f) { total[f] = sum(rows, f); });
      var spendRows = rows.filter(function (r) { return r.spend !== null && r.spend !== undefined; });
      total.spend = spendRows.length ? sum(spendRows, "spend") : null;
      total.cpl = total.spend !== null && total.qualified ? total.spend / total.qualified : null;
      total.roi = total.spend ? (total.revenue - total.spend) / total.spend : null;
      total.coverage = null;
      var foot = el("tfoot", {}, el("tr", {}, el("td", { text: "Total" }),
                                    REPORT_COLUMNS.map(function (c) { return cell(total, c); })));
      p.appendChild(el("div", { class: "card scroll" },
        el("table", { id: "report" }, el("thead", {}, head), body, foot),
        rows.length ? null : el("p", { class: "muted", text: "No calls or visits in this period." })));
    });
  }

  // -- Calls ---------------------------------------------------------------------------

  var CALL_FILTERS = [["channel", "e.g. paid"], ["source", "e.g. google"],
                      ["campaign", "e.g. spring"], ["tag", "e.g. lead"]];

  // the call list, filtered by the API (outcome, carrier, channel, source, campaign, tag:
  // as the reports show them), so "Load more" pages through the matching calls only
  function callsPage(route) {
    var p = clear();
    p.appendChild(el("h1", { text: "Calls" }));
    var outcome = el("select", { id: "f-outcome" },
      ["", "answered", "busy", "no_answer", "cancelled", "failed"].map(function (o) {
        return el("option", { value: o, text: o || "any" });
      }));
    outcome.value = route.params.get("outcome") || "";
    // the carriers are the configured [[carriers]] names (/v1/me), as each call's record
    // names the one it came in by; a name from the URL no longer configured is kept
    var carriers = (state.me.carriers || []).slice();
    var asked = route.params.get("carrier") || "";
    if (asked && carriers.indexOf(asked) < 0) carriers.push(asked);
    var carrier = el("select", { id: "f-carrier" }, [""].concat(carriers).map(function (c) {
      return el("option", { value: c, text: c || "any" });
    }));
    carrier.value = asked;
    var inputs = CALL_FILTERS.map(function (f) {
      return el("input", { id: "f-" + f[0], placeholder: f[1], value: route.params.get(f[0]) || "" });
    });
    var apply = function () {
      var q = new URLSearchParams();
      if (outcome.value) q.set("outcome", outcome.value);
      if (carrier.value) q.set("carrier", carrier.value);
      CALL_FILTERS.forEach(function (f, i) {
        if (inputs[i].value.trim()) q.set(f[0], inputs[i].value.trim());
      });
      location.hash = "#/calls" + (q.toString() ? "?" + q.toString() : "");
    };
    inputs.forEach(function (input) {
      input.addEventListener("keydown", function (ev) { if (ev.key === "Enter") apply(); });
    });
    [outcome, carrier].forEach(function (x) { x.addEventListener("change", apply); });
    p.appendChild(el("div", { class: "filters card" },
      el("label", {}, "Outcome", outcome), el("label", {}, "Carrier", carrier),
      CALL_FILTERS.map(function (f, i) {
        return el("label", {}, f[0].charAt(0).toUpperCase() + f[0].slice(1), inputs[i]);
      }),
      el("button", { type: "button", id: "f-apply", text: "Apply", onclick: apply })));
    var body = el("tbody", {});
    var more = el("button", { type: "button", class: "secondary", id: "calls-more",
                              text: "Load more", hidden: true });
    var none = el("p", { class: "muted", text: "No calls match.", hidden: true });
    p.appendChild(el("div", { class: "card scroll" }, el("table", { id: "calls" },
      el("thead", {}, el("tr", {}, ["Started (" + tz() + ")", "Caller", "Number", "Carrier",
                                    "Outcome", "Ring", "Talk", "Channel", "Source / campaign",
                                    "Tags", "Recording"].map(function (h) {
        return el("th", { text: h });
      }))), body), none, more));
    var base = trackerQuery() + "&" + periodQuery() + "&limit=100";
    ["outcome", "carrier"].concat(CALL_FILTERS.map(function (f) { return f[0]; })).forEach(function (name) {
      var v = (route.params.get(name) || "").trim();
      if (v) base += "&" + name + "=" + encodeURIComponent(v);
    });
    var load = function (cursor) {
      var q = base + (cursor ? "&cursor=" + encodeURIComponent(cursor) : "");
      return api("/v1/calls?" + q).then(function (data) {
        data.calls.forEach(function (c) {
          var s = (c.attribution && c.attribution.session) || {};
          var a = c.attribution || {};
          var src = [a.source || s.utm_source, a.medium || s.utm_medium].filter(Boolean).join("/");
          body.appendChild(el("tr", { class: "clickable", "data-call": c.id, onclick: function () {
            location.hash = "#/calls/" + encodeURIComponent(c.id);
          } },
            el("td", { text: fmtTime(c.started_at) }), el("td", { text: c.caller }),
            el("td", { text: c.did }), el("td", { "data-carrier": "", text: c.carrier || "—" }),
            el("td", { class: "outcome-" + c.outcome, text: c.outcome || "in progress" }),
            el("td", { class: "num", text: secs(c.ring_seconds) }),
            el("td", { class: "num", text: secs(c.talk_seconds) }),
            el("td", { text: callChannel(c) }),
            el("td", { class: "wrap", text: [src, s.utm_campaign].filter(Boolean).join(" · ") || "—" }),
            el("td", {}, (c.tags || []).map(function (t) { return el("span", { class: "tag", text: t }); })),
            el("td", { class: "rec" }, recording(c))));
        });
        none.hidden = body.childNodes.length > 0;
        more.hidden = !data.next_cursor;
        more.onclick = function () { load(data.next_cursor).catch(failure); };
      });
    };
    return load(null);
  }

  function fields(pairs) {
    var dl = el("dl", { class: "fields" });
    pairs.forEach(function (pair) {
      dl.appendChild(el("dt", { text: pair[0] }));
      dl.appendChild(el("dd", { "data-field": pair[0], text: pair[1] === null || pair[1] === undefined
        || pair[1] === "" ? "—" : String(pair[1]) }));
    });
    return dl;
  }

  function callPage(id) {
    var p = clear();
    return api("/v1/calls/" + encodeURIComponent(id)).then(function (c) {
      var a = c.attribution || {};
      var s = a.session || {};
      p.appendChild(el("div", { class: "crumbs" }, el("a", { href: "#/calls", text: "Calls" }),
                       el("span", { text: "›" }), el("span", { text: c.id })));
      p.appendChild(el("h1", { text: c.caller + " → " + c.did }));
      p.appendChild(el("div", { class: "card", id: "recording" }, el("h2", { text: "Recording" }),
                       recording(c, { long: true })));
      p.appendChild(el("div", { class: "grid2" },
        el("div", { class: "card" }, el("h2", { text: "Call" }), fields([
          ["Started", fmtTime(c.started_at, true)], ["Answered", fmtTime(c.answered_at, true)],
          ["Ended", fmtTime(c.ended_at, true)], ["Time zone", tz()], ["Outcome", c.outcome],
          ["SIP code", c.sip_code], ["Carrier", c.carrier],
          ["Hung up by", c.hangup_by], ["Ring", secs(c.ring_seconds)], ["Talk", secs(c.talk_seconds)],
          ["Target", c.target], ["First-time caller", c.first_time_caller ? "yes" : "no"],
          ["Qualified", c.qualified ? "yes" : "no"]])),
        el("div", { class: "card" }, el("h2", { text: "Attribution" }), fields([
          ["Kind", a.kind], ["Channel", a.channel], ["Source", a.source || s.utm_source],
          ["Medium", a.medium || s.utm_medium],
          ["Confidence", a.confidence === undefined ? null : pct(a.confidence)],
          ["Campaign", s.utm_campaign], ["Keyword", s.utm_term], ["Content", s.utm_content],
          ["Landing page", s.landing_page], ["Referrer", s.referrer], ["Session", s.id],
          ["GA client id", s.client_id], ["Metrica id", s.ym_uid],
          ["Custom", s.custom && Object.keys(s.custom).length ? JSON.stringify(s.custom) : null]]))));
      var tagsInput = el("input", { id: "edit-tags", value: (c.tags || []).join(", ") });
      var status = el("select", { id: "edit-status" },
        ["", "new", "qualified", "won", "lost", "spam"].map(function (v) {
          return el("option", { value: v, text: v || "—" });
        }));
      status.value = c.lead_status || "";
      if (c.lead_status && status.value !== c.lead_status) {
        status.appendChild(el("option", { value: c.lead_status, text: c.lead_status }));
        status.value = c.lead_status;
      }
      var value = el("input", { id: "edit-value", type: "number", min: "0", step: "0.01",
                                value: c.value === null || c.value === undefined ? "" : c.value });
      var note = el("span", { id: "edit-result", class: "muted" });
      var admin = state.me.role === "admin";
      var save = el("button", { type: "button", id: "edit-save", text: "Save", disabled: !admin,
        onclick: function () {
          var body = { tags: tagsInput.value.split(",").map(function (t) { return t.trim(); })
                         .filter(Boolean),
                       lead_status: status.value || null,
                       value: value.value === "" ? null : Number(value.value) };
          note.textContent = "saving…";
          api("/v1/calls/" + encodeURIComponent(c.id), { method: "PATCH", body: body })
            .then(function () { note.className = "ok"; note.textContent = "saved"; })
            .catch(function (e) { note.className = "error"; note.textContent = e.message; });
        } });
      [tagsInput, status, value].forEach(function (x) { x.disabled = !admin; });
      p.appendChild(el("div", { class: "card" }, el("h2", { text: "Lead" }),
        el("div", { class: "editor" }, el("label", {}, "Tags (comma-separated)", tagsInput),
           el("label", {}, "Lead status", status), el("label", {}, "Value", value), save, note),
        admin ? null : el("p", { class: "muted", text: "A viewer token can read, not edit." })));
    });
  }

  // the call's player, its length and a download link (player.js), or "not recorded"
  function recording(c, options) {
    return window.calltrackdPlayer(c, { el: el, api: api, secs: secs }, options);
  }

  // -- Pools ---------------------------------------------------------------------------

  // one pool's day hour by hour (GET /v1/pools/usage): bars of the most numbers in use at
  // once, the pool's size as a line, requests turned away; an hour in which no number was
  // taken has no bar
  function usageChart(grid, usage, day, i) {
    var hours = usage.hours;
    var c1 = el("canvas", { id: "pool-usage-" + i, "aria-label": "Numbers in use by hour" });
    var top = null;
    var away = 0;
    hours.forEach(function (h) {
      if (h.peak !== null && (top === null || h.peak > top.peak)) top = h;
      away += h.shortfall;
    });
    var summary = top === null ? "No number was taken on " + day + "."
      : "Most in use: " + top.peak + " of " + usage.size + " at " + fmtHour(top.local) +
        " · turned away: " + away;
    grid.appendChild(el("div", { "data-usage": usage.pool },
      el("h2", { text: "Numbers in use by hour, " + day + " (" + tz() + ")" }),
      el("div", { class: "chart" }, c1),
      el("p", { class: "muted", "data-usage-summary": usage.pool,
                "data-peak": top === null ? "" : top.peak, text: summary })));
    chart(c1, { type: "bar", data: {
      labels: hours.map(function (h) { return fmtHour(h.local); }),
      datasets: [
        { label: "most in use", data: hours.map(function (h) { return h.peak; }),
          backgroundColor: "#4e79a7", stack: "demand", order: 2 },
        { label: "turned away", data: hours.map(function (h) { return h.shortfall || null; }),
          backgroundColor: "#e15759", stack: "demand", order: 3 },
        { label: "pool size (" + usage.size + ")", type: "line", stack: "size",
          data: hours.map(function () { return usage.size; }), borderColor: "#59a14f",
          backgroundColor: "#59a14f", borderDash: [6, 4], pointRadius: 0, order: 1 }] },
      options: { scales: { x: { stacked: true },
                           y: { stacked: true, beginAtZero: true, suggestedMax: usage.size + 1,
                                ticks: { precision: 0 } } } } });
  }

  function pools(route) {
    var p = clear();
    p.appendChild(el("h1", { text: "Pools" }));
    var day = route.params.get("date") || today();
    var picker = el("input", { id: "f-date", type: "date", value: day, onchange: function (ev) {
      if (ev.target.value) location.hash = "#/pools?date=" + encodeURIComponent(ev.target.value);
    } });
    p.appendChild(el("div", { class: "filters card" },
      el("label", {}, "Day (" + tz() + ")", picker)));
    var hasPools = (currentTracker() || { pools: [] }).pools.length > 0;
    return Promise.all([
      api("/v1/stats?" + trackerQuery() + "&" + periodQuery()),
      hasPools ? api("/v1/pools/usage?" + trackerQuery() + "&date=" + encodeURIComponent(day))
               : Promise.resolve({ pools: [] })
    ]).then(function (res) {
      var data = res[0];
      var usageOf = {};
      (res[1].pools || []).forEach(function (u) { usageOf[u.pool] = u; });
      var t = (data.trackers || [])[0];
      if (!t) { p.appendChild(el("p", { class: "muted", text: "No statistics." })); return; }
      p.appendChild(el("div", { class: "tiles" },
        tile("Visitors", num(t.visitors, 0), "visitors"),
        tile("Coverage", pct(t.coverage), "coverage"),
        tile("Accuracy (calls not to a default number)", pct(t.accuracy), "accuracy"),
        tile("Estimated accuracy (right visitor, all calls)", pct(t.estimated_accuracy), "estimated_accuracy")));
      (t.pools || []).forEach(function (pool, i) {
        var card = el("div", { class: "card", "data-pool": pool.pool });
        card.appendChild(el("h2", { text: "Pool " + pool.pool }));
        var grid = el("div", { class: "charts" });
        card.appendChild(grid);
        grid.appendChild(fields([
          ["Size", pool.size], ["Reserved now", pool.reserved], ["Free", pool.free],
          ["Cooling", pool.cooling], ["Peak in use", pool.peak], ["Turned away", pool.shortfall],
          ["Estimated accuracy (its calls)", pool.estimated_accuracy === undefined ? null : pct(pool.estimated_accuracy)],
          ["Replay at this size", pool.replayed_accuracy == null ? null : pct(pool.replayed_accuracy)],
          ["Recommended size", pool.recommended_size]]));
        if (usageOf[pool.pool]) usageChart(grid, usageOf[pool.pool], day, i);
        if (pool.size_curve && pool.size_curve.length) {
          var c2 = el("canvas", { id: "pool-curve-" + i });
          grid.appendChild(el("div", {}, el("h2", { text: "Estimated accuracy by pool size" }),
                              el("div", { class: "chart" }, c2)));
          var pts = pool.size_curve.map(function (x) {
            return { x: x.size, y: x.estimated_accuracy * 100 };
          });
          var rec = pts.filter(function (x) { return x.x === pool.recommended_size; });
          chart(c2, { type: "scatter", data: { datasets: [
            { label: "estimated accuracy %", data: pts, showLine: true, borderColor: "#4e79a7",
              backgroundColor: "#4e79a7" },
            { label: "recommended: " + pool.recommended_size, data: rec, pointRadius: 7,
              pointStyle: "triangle", backgroundColor: "#59a14f", borderColor: "#59a14f" },
            { label: "current: " + pool.size, data: pts.filter(function (x) { return x.x === pool.size; }),
              pointRadius: 6, backgroundColor: "#e15759", borderColor: "#e15759" }] },
            options: { scales: { x: { title: { display: true, text: "numbers in the pool" } },
                                 y: { title: { display: true, text: "%" }, suggestedMax: 100 } } } });
        }
        p.appendChild(card);
      });
    });
  }

  // -- Health --------------------------------------------------------------------------

  function health() {
    var p = clear();
    p.appendChild(el("h1", { text: "Health" }));
    return Promise.all([
      api("/healthz", { allowError: true }),
      api("/v1/admin/webhooks?status=pending&limit=1000"),
      api("/v1/admin/webhooks?status=failed&limit=200")
    ]).then(function (res) {
      var h = res[0].data || {};
      var pending = res[1].deliveries || [];
      var failed = res[2].deliveries || [];
      p.appendChild(el("div", { class: "tiles" },
        tile("Daemon", h.status || ("HTTP " + res[0].status), "status"),
        tile("Webhook queue", num(pending.length, 0) + (pending.length >= 1000 ? "+" : ""), "queue"),
        tile("Failed deliveries", num(failed.length, 0), "failed")));
      var checks = h.checks || {};
      p.appendChild(el("div", { class: "card" }, el("h2", { text: "Checks" }),
        fields(Object.keys(checks).map(function (k) { return [k, checks[k]]; }))));
      var body = el("tbody", {});
      failed.forEach(function (d) {
        var note = el("span", { class: "muted" });
        body.appendChild(el("tr", { "data-delivery": d.id },
          el("td", { text: fmtTime(d.created_at) }), el("td", { text: d.event }),
          el("td", { text: d.tracker }), el("td", { text: d.url }),
          el("td", { class: "num", text: d.attempts }), el("td", { text: d.last_error || "" }),
          el("td", {}, el("button", { type: "button", class: "secondary", text: "Resend",
            "data-resend": d.id, onclick: function (ev) {
              ev.target.disabled = true;
              api("/v1/admin/webhooks/" + encodeURIComponent(d.id) + "/resend", { method: "POST" })
                .then(function () { note.textContent = "queued"; })
                .catch(function (e) { note.textContent = e.message; ev.target.disabled = false; });
            } }), note)));
      });
      p.appendChild(el("div", { class: "card scroll" }, el("h2", { text: "Failed deliveries" }),
        el("table", { id: "failed" }, el("thead", {}, el("tr", {},
          ["Created (" + tz() + ")", "Event", "Tracker", "URL", "Attempts", "Last error",
           ""].map(function (x) {
            return el("th", { text: x });
          }))), body),
        failed.length ? null : el("p", { class: "muted", text: "None." })));
    });
  }

  // -- routing -------------------------------------------------------------------------

  function route() {
    if (!state.me) return;
    var r = parseHash();
    document.querySelectorAll("nav a").forEach(function (a) {
      a.classList.toggle("active", a.getAttribute("data-page") === r.page);
    });
    var views = { overview: overview, sources: sources, calls: callsPage, pools: pools,
                  health: health };
    var view = r.page === "calls" && r.arg ? function () { return callPage(r.arg); }
      : views[r.page] || overview;
    document.body.setAttribute("data-loading", "1");
    Promise.resolve().then(function () { return view(r); }).catch(failure).then(function () {
      document.body.setAttribute("data-loading", "0");
      document.body.setAttribute("data-page", r.page + (r.arg ? "/" + r.arg : ""));
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.getElementById("signin").addEventListener("submit", function (ev) {
      ev.preventDefault();
      state.token = document.getElementById("token").value.trim();
      sessionStorage.setItem(TOKEN_KEY, state.token);
      start().catch(function (e) { signOut(e.message); });
    });
    document.getElementById("signout").addEventListener("click", function () { signOut(null); });
    document.getElementById("tracker").addEventListener("change", function (ev) {
      state.tracker = ev.target.value;
      sessionStorage.setItem("calltrackd.tracker", state.tracker);
      route();
    });
    document.getElementById("period").addEventListener("change", function (ev) {
      state.days = Number(ev.target.value);
      route();
    });
    window.addEventListener("hashchange", route);
    if (state.token) start().catch(function (e) { signOut(e.message); });
    else signOut(null);
  });
})();
