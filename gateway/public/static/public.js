// The public page's plots: hourly means of the last 7 days (data/series.js), drawn with uPlot.
// The tables are in the HTML already; without this script the page only lacks its plots.
(function () {
  "use strict";
  var data = window.MEETKIT_PUBLIC || { locations: {} };
  var lang = document.body.dataset.lang === "nl" ? "nl-NL" : "en-GB";
  var tz = document.body.dataset.tz || data.tz;
  // one time zone for everything on the page: the operator's, 24-hour clock, day before month
  var dayFmt = new Intl.DateTimeFormat(lang, { timeZone: tz, weekday: "short", day: "numeric", month: "numeric" });
  var timeFmt = new Intl.DateTimeFormat(lang, { timeZone: tz, day: "numeric", month: "numeric", hour: "2-digit",
                                                minute: "2-digit", hourCycle: "h23" });
  var number = new Intl.NumberFormat(lang, { maximumFractionDigits: 1, minimumFractionDigits: 1 });
  var SERIES = {
    pm: [["pm25", "PM2.5", "#1f77b4"], ["pm10", "PM10", "#d9822b"]],
    noise: [["laeq", "LAeq", "#6a3d9a"]]
  };
  var plots = [];

  function options(el, kind) {
    var series = [{ value: function (u, t) { return t == null ? "–" : timeFmt.format(new Date(t * 1000)); } }];
    SERIES[kind].forEach(function (s) {
      series.push({ label: s[1], stroke: s[2], width: 1.5, spanGaps: false,
                    value: function (u, v) { return v == null ? "–" : number.format(v); } });
    });
    return {
      title: el.dataset.label, width: Math.max(200, el.clientWidth), height: 240, series: series,
      // ticks at midnights and hours of the operator's zone, whatever the visitor's own
      tzDate: function (t) { return uPlot.tzDate(new Date(t * 1000), tz); },
      scales: { x: { time: true } },
      axes: [
        { values: function (u, splits) { return splits.map(function (t) { return dayFmt.format(new Date(t * 1000)); }); },
          space: 70 },
        { size: 50, values: function (u, splits) { return splits.map(function (v) { return number.format(v); }); } }
      ]
    };
  }

  function draw() {
    var els = document.querySelectorAll("[data-plot]");
    for (var i = 0; i < els.length; i++) {
      var el = els[i];
      var d = data.locations[el.dataset.location];
      if (!d || typeof uPlot === "undefined") { continue; }
      var kind = el.dataset.plot;
      var cols = [d.t].concat(SERIES[kind].map(function (s) { return d[s[0]]; }));
      plots.push([el, new uPlot(options(el, kind), cols, el)]);
    }
    var root = document.documentElement;
    document.body.dataset.overflow = String(Math.max(0, root.scrollWidth - root.clientWidth));
    document.body.dataset.loaded = "1";
  }

  window.addEventListener("resize", function () {
    plots.forEach(function (p) { p[1].setSize({ width: Math.max(200, p[0].clientWidth), height: 240 }); });
  });
  draw();
})();
