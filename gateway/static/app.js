// The gateway's status page: the fleet, the forwarding targets and per-node plots (uPlot).
"use strict";

const HOURS = 24;
const REFRESH_MS = 60000;
const PLOTS = [
  // title, series: [key, label, colour, scale], scales' units
  {title: "PM (µg/m³)", series: [["pm25", "PM2.5", "#c0392b", "ug"], ["pm10", "PM10", "#e67e22", "ug"]]},
  {title: "Noise (dB(A))", series: [["LAeq", "LAeq", "#2c3e50", "dB"], ["LA10", "LA10", "#8e44ad", "dB"],
                                    ["LA90", "LA90", "#16a085", "dB"]]},
  {title: "Temperature (°C), humidity (%)", series: [["temp", "T °C", "#d35400", "degC"], ["rh", "RH %", "#2980b9", "%"]]},
  {title: "Pressure (hPa)", series: [["press", "p hPa", "#7f8c8d", "hPa"]]},
];
const charts = {};  // "node/plot index" -> uPlot
const wins = {};  // node -> {since, until}: its plots' time range, unix s

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return e;
}

function ago(seconds) {
  if (seconds == null) return "never";
  const s = Math.max(0, Math.round(seconds));
  if (s < 90) return s + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 172800) return (s / 3600).toFixed(1) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

function when(ts, now) {
  if (ts == null) return "never";
  const d = new Date(ts * 1000);
  return d.toISOString().replace("T", " ").slice(0, 19) + " UTC (" + ago(now - ts) + ")";
}

function num(v) { return v == null ? "–" : v; }

// where the register puts the node: an OpenStreetMap link (opened only when clicked: the page
// itself needs no internet), with the mounting height
function position(r) {
  if (!r || r.lat == null) return ["–"];
  const lat = r.lat.toFixed(5), lon = r.lon.toFixed(5);
  const link = el("a", {class: "map", target: "_blank", rel: "noopener",
                        href: "https://www.openstreetmap.org/?mlat=" + lat + "&mlon=" + lon + "#map=18/" + lat + "/" + lon},
                  lat + ", " + lon);
  return r.height_m == null ? [link] : [link, " at " + r.height_m + " m"];
}

function fleet(doc) {
  const body = document.querySelector("#fleet tbody");
  body.replaceChildren();
  for (const n of doc.nodes) {
    // a visiting node (failed over to a neighbour's gateway) says on which broker of its list it is
    const tip = f => f === "visiting" ? {title: "on broker " + n.via + " of its list (0: its own gateway's); " +
                                              num(n.held) + " records in its spool not yet safe" +
                                              (n.town ? "; forwarded under its home town, " + n.town : "")}
      : f === "unknown visitor" && doc.region ? {title: doc.region.unknown} : {};
    const flags = n.flags.length ? n.flags.map(f => el("span", {class: "flag " + f.replace(/ /g, "-"), ...tip(f)}, f))
                                 : [el("span", {class: "flag ok"}, "ok")];
    const bad = n.flags.includes("stale") || n.flags.includes("offline");
    const r = n.register || {};
    body.append(el("tr", {class: n.flags.includes("never seen") ? "never" : bad ? "bad" : "", "data-node": n.node},
      el("td", {class: "node"}, n.node), el("td", {class: "name"}, num(r.name)),
      el("td", {class: "board"}, num(r.board)),
      el("td", {class: "date"}, num(r.installed)), el("td", {class: "position"}, ...position(n.register)),
      el("td", n.last_seen == null ? {class: "seen"} : {class: "seen", title: when(n.last_seen, doc.now)},
         n.last_seen == null ? "never" : ago(doc.now - n.last_seen)),
      el("td", {class: "num"}, num(n.rssi)), el("td", {class: "num"}, num(n.boot)), el("td", {}, num(n.fw)),
      el("td", {class: "num"}, n.records), el("td", {class: "num"}, n.gaps),
      el("td", {class: "num"}, num(n.dropped)), el("td", {}, ...flags)));
  }
  if (!doc.nodes.length) body.append(el("tr", {}, el("td", {colspan: 13, class: "empty"}, "no node heard of yet")));
  const box = document.getElementById("fleet-errors");
  const errors = (doc.fleet && doc.fleet.errors) || [];
  box.replaceChildren(...(errors.length ? [el("p", {}, "The fleet register " + doc.fleet.path +
      " cannot be read; names, positions and never-seen nodes are not shown until it is fixed (ingest goes on):"),
    el("ul", {}, ...errors.map(e => el("li", {}, e)))] : []));
  // in a region: the visitors' home towns (what a visiting node's records are forwarded under)
  const rg = doc.region, unknown = doc.nodes.filter(n => n.flags.includes("unknown visitor"));
  const towns = rg ? [rg.error, ...rg.problems].filter(x => x) : [];
  if (towns.length) box.append(el("p", {}, "The visitors' table " + rg.visitors_file + " cannot be used whole; " +
      "a visitor it does not give a town is forwarded under " + rg.town + " (ingest goes on):"),
    el("ul", {}, ...towns.map(e => el("li", {}, e))));
  if (unknown.length) box.append(el("p", {}, unknown.length + " unknown visitor(s), " +
      unknown.map(n => n.node).join(", ") + ": " + rg.unknown));
  box.hidden = !(errors.length || towns.length || unknown.length);
}

// the fleet over the air: mode, configuration wanted versus running (what the node refused and
// why, what is held back), the last crash report and self-test; nothing secret is in the API
function configCell(c, now) {
  if (!c) return ["–"];
  const text = (c.wanted == null ? "–" : c.wanted) + " / " + (c.running == null ? "–" : c.running);
  if (c.problem) return [text + " ", el("span", {class: "flag held-back", title: c.problem}, "held back"),
                         el("div", {class: "why"}, c.problem)];
  const r = c.reverted;
  const state = r && c.behind ? el("span", {class: "flag refused", title: r.reason}, "reverted by the node")
    : c.behind ? el("span", {class: "flag behind"}, c.published ? "sent, not yet running" : "to send")
    : c.trial ? el("span", {class: "flag behind"}, "on trial")
    : el("span", {class: "flag ok"}, "running");
  const shown = Object.entries(c.shown || {})
    .map(([k, v]) => k + " " + (typeof v === "object" ? JSON.stringify(v) : v));
  const out = [el("span", shown.length ? {title: shown.join("\n")} : {}, text + " "), state];
  if (r && c.behind) out.push(el("div", {class: "why"}, "runs " + r.back_to + " again; will not take " + r.version +
                                 ": " + r.reason));
  return out;
}

function refusedCell(c, now) {
  const last = c && c.last;
  if (!last) return ["–"];
  if (last.state === "refused") return [el("span", {class: "flag refused"}, "refused whole"), " " + last.reason];
  if (last.state === "reverted") return [el("span", {class: "flag refused"}, "reverted " + last.version),
                                         " " + last.reason];
  const keys = Object.entries(last.refused || {});
  if (!keys.length) return ["none (version " + last.version + ")"];
  return keys.map(([k, why]) => el("div", {}, el("span", {class: "flag refused"}, k), " " + why));
}

function crashCell(n, now) {
  if (!n.crash) return ["–"];
  const lines = (n.crash.trace || "").split("\n").filter(l => l.trim());
  return [el("span", {title: n.crash.trace}, when(n.crash.at, now)),
          el("div", {class: "why"}, (lines[lines.length - 1] || "") + " (" + n.crash.count + " in a row, " +
             n.crashes + " kept)")];
}

function selftestCell(n, now) {
  const t = n.selftest, r = n.cmd_refused;
  if (r && (!t || r.at > t.at)) return [when(r.at, now) + " ", el("span", {class: "flag refused"}, "command refused"),
                                        " " + r.reason];
  if (!t) return ["–"];
  if (!t.checks) return [when(t.at, now) + " ", el("span", {class: "flag refused"}, "refused"), " " + t.reason];
  const items = Object.entries(t.checks).map(([k, [r, d]]) =>
    el("span", {class: "flag " + (r === "pass" ? "ok" : "failed"), title: d}, k + " " + r));
  return [el("div", {}, when(t.at, now)), ...items];
}

function air(doc) {
  const body = document.querySelector("#air tbody");
  body.replaceChildren();
  const shown = doc.nodes.filter(n => n.mode || n.config || n.crash || n.selftest || n.cmd_refused);
  for (const n of shown) {
    const bad = n.mode === "safe" || (n.config && (n.config.problem || (n.config.reverted && n.config.behind) ||
                                                   (n.config.last && n.config.last.state)));
    body.append(el("tr", {class: bad ? "bad" : "", "data-node": n.node},
      el("td", {class: "node"}, n.node),
      el("td", {}, n.mode ? el("span", {class: "flag mode-" + n.mode}, n.mode) : "–"),
      el("td", {class: "config"}, ...configCell(n.config, doc.now)),
      el("td", {class: "refused"}, ...refusedCell(n.config, doc.now)),
      el("td", {class: "crash"}, ...crashCell(n, doc.now)),
      el("td", {class: "selftest"}, ...selftestCell(n, doc.now))));
  }
  if (!shown.length) body.append(el("tr", {}, el("td", {colspan: 6, class: "empty"},
    "nothing over the air yet: no configuration in the register, no event from a node")));
}

function targets(doc) {
  const body = document.querySelector("#targets tbody");
  body.replaceChildren();
  for (const t of doc.targets) {
    body.append(el("tr", {class: t.up === false ? "bad" : "", "data-target": t.name},
      el("td", {}, t.name), el("td", {}, num(t.kind)), el("td", {class: "num"}, num(t.queue_rows)),
      el("td", {}, t.oldest_age_s == null ? "–" : ago(t.oldest_age_s).replace(" ago", "")),
      el("td", {}, when(t.last_success, doc.now)), el("td", {class: "num"}, num(t.retries)),
      el("td", {class: "num"}, num(t.dead_letters)), el("td", {}, num(t.last_error))));
  }
  if (!doc.targets.length) {
    const why = doc.targets_error ? "targets unavailable: " + doc.targets_error : "no forwarding target configured";
    body.append(el("tr", {}, el("td", {colspan: 8, class: "empty"}, why)));
  }
}

// the newest rollout of a release (meetkit-gateway fleet update): its state, and each node's stage and state
function rollout(doc) {
  const box = document.getElementById("rollout");
  const r = doc.rollout;
  box.hidden = !r;
  if (!r) return;
  const stage = s => s === 0 ? "canary" : "wave " + s;
  const count = {};
  for (const n of r.nodes) count[n.state] = (count[n.state] || 0) + 1;
  document.getElementById("rollout-summary").textContent =
    "Rollout " + r.id + " of release " + r.release + ": " + (r.state === "halted" ? "HALTED" : r.state) +
    (r.reason ? " (" + r.reason + ")" : "") + (r.state === "running" ? ", " + stage(r.stage) + " under way" : "") +
    "; " + Object.entries(count).map(([k, v]) => v + " " + k).join(", ") + "; started " + when(r.created_at, doc.now);
  box.className = r.state === "halted" ? "halted" : "";
  const body = document.querySelector("#rollout-nodes tbody");
  // failed halts the rollout; skipped (no answer in time: away, or silent) does not, but needs a look
  const cls = {failed: "bad", skipped: "skipped"};
  body.replaceChildren(...r.nodes.map(n => el("tr", {class: cls[n.state] || "", "data-node": n.node},
    el("td", {}, n.node), el("td", {}, stage(n.stage)), el("td", {class: "state"}, n.state),
    el("td", {class: "num"}, n.offers), el("td", {}, ago(doc.now - n.updated_at)), el("td", {}, num(n.reason)))));
}

function alarms(doc) {
  const box = document.getElementById("alarms");
  box.replaceChildren(...doc.alarms.map(a => el("p", {}, "ALARM " + a.code + ": " + a.reason)));
  box.hidden = !doc.alarms.length;
}

function width() {
  return Math.max(320, Math.min(620, Math.floor((document.documentElement.clientWidth - 80) / 2)));
}

function plot(node, i, spec, data) {
  const key = node + "/" + i;
  const scales = [...new Set(spec.series.map(s => s[3]))];
  const cols = [data.start, ...spec.series.map(s => data[s[0]])];
  if (charts[key]) { charts[key].setData(cols); return null; }
  const opts = {
    title: spec.title, width: width(), height: 220,
    scales: {x: {time: true, range: () => [wins[node].since, wins[node].until]}},
    series: [{}, ...spec.series.map(s => ({label: s[1], stroke: s[2], width: 1.5, scale: s[3], spanGaps: false}))],
    axes: [{}, ...scales.map((u, j) => ({scale: u, side: j ? 1 : 3, size: 64, grid: {show: j === 0}}))],
  };
  const box = el("div", {class: "plot", "data-plot": spec.series.map(s => s[0]).join(",")});
  charts[key] = new uPlot(opts, cols, box);
  return box;
}

async function getJSON(url) {
  const r = await fetch(url, {cache: "no-store"});
  if (!r.ok) throw new Error(url + ": HTTP " + r.status);
  return r.json();
}

async function refresh() {
  let doc;
  try {
    doc = await getJSON("api/nodes");
  } catch (e) {
    document.getElementById("summary").textContent = "the gateway does not answer: " + e.message;
    return;
  }
  const c = doc.counts;
  const heard = doc.nodes.filter(n => !n.flags.includes("never seen"));
  const f = doc.fleet || {};
  const reg = f.registered == null ? "" : " (" + f.registered + " in the register, " + f.never_seen + " never seen)";
  document.getElementById("summary").textContent =
    heard.length + " nodes heard of" + reg + ", " + c.records + " records, " + c.readings + " readings, " + c.dead_letters +
    " dead letters; updated " + new Date(doc.now * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
  fleet(doc); air(doc); targets(doc); alarms(doc); rollout(doc);
  const plots = document.getElementById("plots");
  for (const n of heard) {
    let section = plots.querySelector('section[data-node="' + CSS.escape(n.node) + '"]');
    if (!section) {
      section = el("section", {"data-node": n.node}, el("h3", {}, n.node), el("div", {class: "node-plots"}));
      plots.append(section);
    }
    const data = await getJSON("api/series?node=" + encodeURIComponent(n.node) + "&hours=" + HOURS);
    wins[n.node] = {since: data.since, until: data.until};
    const row = section.querySelector(".node-plots");
    PLOTS.forEach((spec, i) => { const box = plot(n.node, i, spec, data); if (box) row.append(box); });
  }
  document.body.setAttribute("data-loaded", "1");
}

refresh();
setInterval(refresh, REFRESH_MS);
