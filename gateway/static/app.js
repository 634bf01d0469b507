// The gateway's status page: the fleet, the forwarding targets and per-node plots (uPlot), and a
// view of one node (#node=ID). Every time is shown in one time zone, the gateway's [http] timezone
// (the API's "tz"), with a 24-hour clock and the day before the month.
"use strict";

const RANGES = [[1, "1 h"], [24, "24 h"], [168, "7 d"], [720, "30 d"]];  // hours, button
let HOURS = 24;
let TZ = "UTC";  // until the first answer says the gateway's
const REFRESH_MS = 60000;

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

// the parts of a time in TZ: {year, month, day, hour, minute, second} as two-digit strings
const partsCache = {};
function parts(ts) {
  let f = partsCache[TZ];
  if (!f) f = partsCache[TZ] = new Intl.DateTimeFormat("en-GB", {timeZone: TZ, hourCycle: "h23", year: "numeric",
    month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit"});
  const out = {};
  for (const p of f.formatToParts(new Date(ts * 1000))) out[p.type] = p.value;
  return out;
}

// 07-12-2026 05:43:10: day-month-year, 24-hour clock, in TZ
function fullTime(ts) {
  const p = parts(ts);
  return p.day + "-" + p.month + "-" + p.year + " " + p.hour + ":" + p.minute + ":" + p.second;
}

function when(ts, now) {
  if (ts == null) return "never";
  return fullTime(ts) + " (" + ago(now - ts) + ")";
}

// "1 node", "2 nodes"
function plural(n, one, many) { return n + " " + (n === 1 ? one : many); }

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
      el("td", {class: "node"}, el("a", {href: "#node=" + encodeURIComponent(n.node)}, n.node)),
      el("td", {class: "name"}, num(r.name)),
      el("td", {class: "board"}, num(r.board)),
      el("td", {class: "date"}, num(r.installed)), el("td", {class: "position"}, ...position(n.register)),
      el("td", n.last_seen == null ? {class: "seen"} : {class: "seen", title: when(n.last_seen, doc.now)},
         n.last_seen == null ? "never" : ago(doc.now - n.last_seen)),
      el("td", {class: "num"}, num(n.rssi)), el("td", {class: "num"}, num(n.boot)), el("td", {}, num(n.fw)),
      el("td", {class: "num"}, n.records), el("td", {class: "num"}, n.gaps),
      el("td", {class: "num"}, num(n.dropped)), el("td", {class: "health"}, ...flags)));
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
  if (unknown.length) box.append(el("p", {}, plural(unknown.length, "unknown visitor", "unknown visitors") + ", " +
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

// every cell of a table carries its column's name: at phone width each row is a card of
// "name: value" lines (style.css), so that no column is off the screen
function label(table) {
  const names = [...table.querySelectorAll("thead th")].map(th => th.textContent);
  for (const tr of table.querySelectorAll("tbody tr")) {
    [...tr.children].forEach((td, i) => { if (names[i] && !td.hasAttribute("colspan")) td.setAttribute("data-label", names[i]); });
  }
}

// -- plots ------------------------------------------------------------------------------------------

const PLOTS = [
  // title, series: [key, label, colour, scale]
  {title: "PM (µg/m³)", series: [["pm25", "PM2.5", "#c0392b", "ug"], ["pm10", "PM10", "#e67e22", "ug"]]},
  {title: "Noise (dB(A))", series: [["LAeq", "LAeq", "#2c3e50", "dB"], ["LA10", "LA10", "#8e44ad", "dB"],
                                    ["LA90", "LA90", "#16a085", "dB"]]},
  {title: "Temperature (°C), humidity (%)", series: [["temp", "T °C", "#d35400", "degC"], ["rh", "RH %", "#2980b9", "%"]]},
  {title: "Pressure (hPa)", series: [["press", "p hPa", "#7f8c8d", "hPa"]]},
];
const COLOURS = ["#c0392b", "#2980b9", "#16a085", "#8e44ad", "#d35400", "#2c3e50", "#7f8c8d", "#27ae60"];
const charts = {};  // box id -> uPlot

// a plot's width: two side by side on a wide screen, one across a narrow one
function plotWidth() {
  const box = document.getElementById("plots");
  const w = (box && box.clientWidth) || document.documentElement.clientWidth - 32;
  return w < 700 ? Math.max(240, w - 4) : Math.min(640, Math.floor((w - 12) / 2));
}

// tick labels of a value axis: as many decimals as the step between ticks needs, no thousands separator
function numLabels(u, splits, ai, space, incr) {
  const dec = Math.max(0, Math.min(6, -Math.floor(Math.log10(incr) + 1e-9)));
  return splits.map(v => v == null ? "" : v.toFixed(dec));
}

// tick labels of the time axis in TZ: 05:00, with the date (07-12) under the first tick of each day;
// dates alone when ticks are a day or more apart
function timeLabels(u, splits, ai, space, incr) {
  let day = null;
  return splits.map(ts => {
    const p = parts(ts), d = p.day + "-" + p.month;
    if (incr >= 86400) return d;
    const t = p.hour + ":" + p.minute, first = d !== day;
    day = d;
    return first ? t + "\n" + d : t;
  });
}

// an axis as wide (value axes) or as tall (the time axis) as its labels: nothing clipped
function axisSize(u, values, ai, cycle) {
  const axis = u.axes[ai];
  if (cycle > 1 && axis._size) return axis._size;
  const gap = (axis.ticks && axis.ticks.show !== false ? axis.ticks.size : 0) + (axis.gap || 0);
  u.ctx.font = axis.font[0];
  const lines = (values || []).flatMap(v => String(v == null ? "" : v).split("\n"));
  if (ai === 0) {
    const rows = Math.max(1, ...(values || []).map(v => String(v == null ? "" : v).split("\n").length));
    return Math.ceil(gap + rows * axis.font[1] * 1.3 + 4);
  }
  const widest = Math.max(0, ...lines.map(v => u.ctx.measureText(v).width)) / (window.devicePixelRatio || 1);
  return Math.ceil(gap + widest + 8);
}

function newestInLegend(u) {
  const last = u.data[0].length - 1;
  if (u.cursor.idx == null && last >= 0) u.setLegend({idx: last});
}

function plot(key, title, series, data, parent) {
  const scales = [...new Set(series.map(s => s[3]))];
  const cols = [data.start, ...series.map(s => data[s[0]] || [])];
  // the time axis fitted to the data: from its first point (or the window's start) to the window's end
  const x0 = data.first == null ? data.since : data.first, x1 = Math.max(data.until, (data.last || 0) + (data.step || 60));
  const old = charts[key];
  if (old) { old.destroy(); delete charts[key]; }
  const opts = {
    title: title, width: plotWidth(), height: 220,
    tzDate: ts => uPlot.tzDate(new Date(ts * 1e3), TZ),
    padding: [8, scales.length > 1 ? 4 : 18, 0, 4],  // room for the last time label without a right axis
    scales: {x: {time: true, range: () => [x0, x1]}},
    series: [{value: (u, ts) => ts == null ? "–" : fullTime(ts)},
             ...series.map(s => ({label: s[1], stroke: s[2], width: 1.5, scale: s[3], spanGaps: data.step > 0,
                                  value: (u, v) => v == null ? "–" : v.toFixed(Math.abs(v) >= 100 ? 1 : 2)}))],
    axes: [{values: timeLabels, size: axisSize, space: 60},
           ...scales.map((sc, j) => ({scale: sc, side: j ? 1 : 3, size: axisSize, values: numLabels,
                                      grid: {show: j === 0}}))],
    // the legend says the newest point while the cursor is not over the plot (uPlot's own: dashes)
    hooks: {ready: [newestInLegend], setCursor: [newestInLegend]},
  };
  const box = el("div", {class: "plot", "data-plot": series.map(s => s[0]).join(",")});
  parent.append(box);
  charts[key] = new uPlot(opts, cols, box);
  return box;
}

async function getJSON(url) {
  const r = await fetch(url, {cache: "no-store"});
  if (!r.ok) throw new Error(url + ": HTTP " + r.status);
  return r.json();
}

function rangeText(data) {
  const name = (RANGES.find(r => r[0] === HOURS) || [0, HOURS + " h"])[1];
  const step = data.step ? ", means over " + (data.step >= 3600 ? data.step / 3600 + " h" : data.step / 60 + " min") : "";
  return "Last " + name + step + " (times in " + TZ + ")";
}

async function overviewPlots(heard) {
  const plots = document.getElementById("plots");
  let shown = null;
  for (const n of heard) {
    let section = plots.querySelector('section[data-node="' + CSS.escape(n.node) + '"]');
    if (!section) {
      section = el("section", {"data-node": n.node},
                   el("h3", {}, el("a", {href: "#node=" + encodeURIComponent(n.node)}, n.node)),
                   el("div", {class: "node-plots"}));
      plots.append(section);
    }
    const data = await getJSON("api/series?node=" + encodeURIComponent(n.node) + "&hours=" + HOURS);
    shown = data;
    const row = section.querySelector(".node-plots");
    PLOTS.forEach((spec, i) => plot(n.node + "/" + i, spec.title, spec.series, data, row));
    if (!data.start.length) row.prepend(el("p", {class: "empty nodata"}, "no record in this range"));
  }
  if (shown) document.getElementById("plots-title").textContent = rangeText(shown);
}

function rangeButtons() {
  for (const box of document.querySelectorAll(".ranges")) {
    box.replaceChildren(...RANGES.map(([h, name]) => {
      const b = el("button", {type: "button", "data-hours": h, "aria-pressed": String(h === HOURS)}, name);
      b.addEventListener("click", () => { HOURS = h; rangeButtons(); route(); });
      return b;
    }));
  }
}

// -- the node view ----------------------------------------------------------------------------------

function kv(rows) {
  return el("table", {class: "kv"}, el("tbody", {}, ...rows.map(([k, ...v]) => el("tr", {}, el("th", {}, k),
    el("td", {}, ...v)))));
}

function configText(c) {
  if (!c) return ["none sent over the air (the node runs the configuration on its flash)"];
  return configCell(c).concat(Object.entries(c.shown || {}).map(([k, v]) =>
    el("div", {class: "why"}, k + " = " + (typeof v === "object" ? JSON.stringify(v) : v))));
}

async function nodeView(id) {
  const doc = await getJSON("api/node?node=" + encodeURIComponent(id));
  TZ = doc.tz || TZ;
  const n = doc.node, r = n.register || {}, rec = doc.record;
  const box = document.getElementById("node-body");
  document.getElementById("node-title").textContent = "Node " + n.node + (r.name ? " — " + r.name : "");
  document.getElementById("summary").textContent = "Node " + n.node + "; updated " + fullTime(doc.now) + " (" + TZ + ")";
  const flags = n.flags.length ? n.flags.map(f => el("span", {class: "flag " + f.replace(/ /g, "-")}, f))
                               : [el("span", {class: "flag ok"}, "ok")];
  const sensors = rec ? Object.entries(rec.sensors).map(([k, v]) => k + ": " + v).join(", ") : "";
  const gaps = doc.boots.reduce((a, b) => a + b.missing, 0);
  const about = kv([
    ["health", ...flags], ["last seen", when(n.last_seen, doc.now)], ["board", num(r.board || (rec && rec.board))],
    ["position", ...position(n.register)], ["installed", num(r.installed)],
    ["firmware", num(n.fw || (rec && rec.fw))], ["sensors", sensors || "–"],
    ["mode", num(n.mode)], ["configuration (wanted / running)", ...configText(n.config)],
    ["signal (dBm)", num(n.rssi)], ["boot", num(n.boot)],
    ["records", String(n.records)], ["gaps", plural(gaps, "record missing", "records missing")],
    ["dropped by its spool", num(n.dropped)],
  ]);
  about.id = "node-about";
  const readings = el("table", {id: "node-readings"},
    el("thead", {}, el("tr", {}, ...["quantity", "mean", "min", "max", "unit", "flags"].map(h => el("th", {}, h)))),
    el("tbody", {}, ...(rec ? rec.readings : []).map(g => el("tr", {"data-quantity": g.quantity},
      el("td", {}, g.quantity), el("td", {class: "num"}, num(g.avg)), el("td", {class: "num"}, num(g.min)),
      el("td", {class: "num"}, num(g.max)), el("td", {}, g.unit),
      el("td", {}, ...(g.flags.length ? g.flags.map(f => el("span", {class: "flag warn"}, f)) : ["–"]))))));
  const boots = el("table", {id: "node-boots"},
    el("thead", {}, el("tr", {}, ...["boot", "sequence numbers", "records", "missing"].map(h => el("th", {}, h)))),
    el("tbody", {}, ...doc.boots.map(b => el("tr", {class: b.missing ? "bad" : ""},
      el("td", {class: "num"}, b.boot), el("td", {}, b.first_seq + "–" + b.last_seq),
      el("td", {class: "num"}, b.records), el("td", {class: "num"}, b.missing)))));
  const recHead = rec ? "Newest record: " + (rec.start == null ? "start unknown" : fullTime(rec.start)) + ", " +
                        rec.dur + " s, boot " + rec.boot + " seq " + rec.seq : "No record yet";
  const plotsBox = el("div", {class: "node-plots", id: "node-plots"});
  box.replaceChildren(el("h3", {}, "About"), el("div", {class: "wide"}, about), el("h3", {}, recHead),
                      el("div", {class: "wide"}, readings), el("h3", {}, "Boots and sequence gaps"),
                      el("div", {class: "wide"}, boots), el("h3", {id: "node-plots-title"}, ""), plotsBox);
  for (const t of [readings, boots]) label(t);
  if (!rec) return;
  // every quantity of its newest record, one plot per unit
  const qs = rec.readings.map(g => g.quantity);
  const data = await getJSON("api/series?node=" + encodeURIComponent(id) + "&hours=" + HOURS + "&q=" + qs.join(","));
  const byUnit = {};
  rec.readings.forEach(g => (byUnit[g.unit] = byUnit[g.unit] || []).push(g.quantity));
  let c = 0;
  Object.entries(byUnit).forEach(([unit, group], i) => plot("node/" + i, group.join(", ") + " (" + unit + ")",
    group.map(q => [q, q, COLOURS[c++ % COLOURS.length], unit]), data, plotsBox));
  document.getElementById("node-plots-title").textContent = rangeText(data);
}

// -- the whole page -----------------------------------------------------------------------------------

async function overview() {
  let doc;
  try {
    doc = await getJSON("api/nodes");
  } catch (e) {
    document.getElementById("summary").textContent = "the gateway does not answer: " + e.message;
    return;
  }
  TZ = doc.tz || TZ;
  const c = doc.counts;
  const heard = doc.nodes.filter(n => !n.flags.includes("never seen"));
  const f = doc.fleet || {};
  const reg = f.registered == null ? "" : " (" + f.registered + " in the register, " + f.never_seen + " never seen)";
  document.getElementById("summary").textContent =
    plural(heard.length, "node", "nodes") + " heard of" + reg + ", " + plural(c.records, "record", "records") + ", " +
    plural(c.readings, "reading", "readings") + ", " + plural(c.dead_letters, "dead letter", "dead letters") +
    "; updated " + fullTime(doc.now) + " (" + TZ + ")";
  fleet(doc); air(doc); targets(doc); alarms(doc); rollout(doc);
  for (const t of document.querySelectorAll("#fleet, #air, #targets, #rollout-nodes")) label(t);
  await overviewPlots(heard);
}

function nodeOfHash() {
  const m = /^#node=(.+)$/.exec(location.hash);
  return m ? decodeURIComponent(m[1]) : null;
}

async function route() {
  const id = nodeOfHash();
  document.body.classList.toggle("node-mode", id != null);
  document.getElementById("node-view").hidden = id == null;
  for (const k of Object.keys(charts)) { charts[k].destroy(); delete charts[k]; }
  for (const box of document.querySelectorAll(".node-plots")) box.replaceChildren();
  document.body.removeAttribute("data-loaded");
  try {
    if (id == null) await overview(); else await nodeView(id);
  } catch (e) {
    document.getElementById(id == null ? "summary" : "node-body").textContent = "the gateway does not answer: " + e.message;
  }
  document.body.setAttribute("data-loaded", "1");
}

rangeButtons();
window.addEventListener("hashchange", route);
route();
// a range beyond a day is drawn from means the gateway keeps 5 minutes: redrawn as often
let ticks = 0;
setInterval(() => { ticks += 1; if (HOURS <= 24 || ticks % 5 === 0) route(); }, REFRESH_MS);
