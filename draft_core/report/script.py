"""The report page's script and style, inlined into every page (no server, no network, no library).

The script draws each curve as an SVG line chart: hover shows the values of every series
at the nearest step, dragging across the plot zooms to that range of steps (double-click
or "reset zoom" goes back), and clicking a legend entry hides or shows its series. It
also drives the grid slider (and its play button) and the metric picker. Data comes from
the page's ``<script type="application/json" id="draft-report-data">`` block.

Test hooks the browser tests read: each series' ``<path class="line">`` carries
``data-points`` (how many points it drew), each chart's ``<svg>`` its x range in
``data-x0`` / ``data-x1``.
"""

SCRIPT = r"""
(function () {
"use strict";
var NS = "http://www.w3.org/2000/svg";
var DATA = JSON.parse(document.getElementById("draft-report-data").textContent);
var uid = 0;

function svgEl(tag, attrs, parent) {
  var e = document.createElementNS(NS, tag);
  for (var k in attrs) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
}
function htmlEl(tag, cls, parent, text) {
  var e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}
function fmt(v) {
  if (v === null || v === undefined) return "-";
  var a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(3).replace(/\.?0+e/, "e");
  return String(parseFloat(v.toPrecision(5)));
}
function ticks(lo, hi, n) {
  var span = hi - lo, step = Math.pow(10, Math.floor(Math.log10(span / n))), err = span / n / step;
  if (err >= 7.5) step *= 10; else if (err >= 3.5) step *= 5; else if (err >= 1.5) step *= 2;
  var out = [];
  for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return out;
}
// Index of the point of sorted xs nearest to x.
function nearest(xs, x) {
  var lo = 0, hi = xs.length - 1;
  while (hi - lo > 1) { var mid = (lo + hi) >> 1; if (xs[mid] < x) lo = mid; else hi = mid; }
  return Math.abs(xs[hi] - x) < Math.abs(xs[lo] - x) ? hi : lo;
}

function Chart(root, spec) {
  this.root = root; this.hidden = {}; this.zoom = null; this.drag = null;
  this.head = htmlEl("div", "chart-head", root);
  this.titleEl = htmlEl("span", "chart-title", this.head);
  this.reset = htmlEl("button", "reset", this.head, "reset zoom");
  this.reset.type = "button";
  this.legend = htmlEl("div", "legend", root);
  this.box = htmlEl("div", "plot", root);
  this.svg = svgEl("svg", {"class": "chart"}, this.box);
  this.tip = htmlEl("div", "tip", this.box);
  var self = this;
  this.reset.addEventListener("click", function () { self.zoom = null; self.render(); });
  this.setSpec(spec);
}
Chart.prototype.setSpec = function (spec) {
  this.spec = spec; this.zoom = null; this.hidden = {};
  this.titleEl.textContent = spec.title;
  this.legend.textContent = "";
  var self = this;
  spec.series.forEach(function (s) {
    s.ok = [];  // indices of the finite points
    for (var i = 0; i < s.y.length; i++) if (s.y[i] !== null) s.ok.push(i);
    if (s.legend === false) return;
    var item = htmlEl("span", "item", self.legend);
    var sw = htmlEl("span", "swatch", item); sw.style.background = s.color;
    htmlEl("span", "", item, s.name);
    item.addEventListener("click", function () {
      self.hidden[s.name] = !self.hidden[s.name];
      item.classList.toggle("off", !!self.hidden[s.name]);
      self.render();
    });
  });
  this.render();
};
Chart.prototype.visible = function () {
  var self = this;
  return this.spec.series.filter(function (s) { return !self.hidden[s.group || s.name] && s.ok.length; });
};
Chart.prototype.render = function () {
  var svg = this.svg, W = Math.max(320, this.box.clientWidth || 640), H = 270;
  var m = {l: 62, r: 14, t: 10, b: 36}, iw = W - m.l - m.r, ih = H - m.t - m.b;
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  svg.setAttribute("width", W); svg.setAttribute("height", H); svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  this.reset.style.visibility = this.zoom ? "visible" : "hidden";
  var series = this.visible(), all = series.length ? series : this.spec.series;
  var x0 = Infinity, x1 = -Infinity;
  all.forEach(function (s) { s.ok.forEach(function (i) { x0 = Math.min(x0, s.x[i]); x1 = Math.max(x1, s.x[i]); }); });
  if (this.zoom) { x0 = this.zoom[0]; x1 = this.zoom[1]; }
  if (!isFinite(x0)) { x0 = 0; x1 = 1; }
  if (x1 <= x0) { x0 -= 0.5; x1 += 0.5; }
  var y0 = Infinity, y1 = -Infinity;
  series.forEach(function (s) {
    s.ok.forEach(function (i) {
      if (s.x[i] < x0 || s.x[i] > x1) return;
      var lo = s.lo ? Math.min(s.lo[i], s.y[i]) : s.y[i], hi = s.hi ? Math.max(s.hi[i], s.y[i]) : s.y[i];
      y0 = Math.min(y0, lo); y1 = Math.max(y1, hi);
    });
  });
  if (!isFinite(y0)) { y0 = 0; y1 = 1; }
  if (y1 <= y0) { var d = Math.abs(y0) * 0.05 || 0.5; y0 -= d; y1 += d; }
  var pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
  var sx = function (v) { return m.l + (v - x0) / (x1 - x0) * iw; };
  var sy = function (v) { return m.t + (1 - (v - y0) / (y1 - y0)) * ih; };
  this.sx = sx; this.x0 = x0; this.x1 = x1; this.m = m; this.iw = iw; this.ih = ih;
  svg.setAttribute("data-x0", x0); svg.setAttribute("data-x1", x1);
  var axes = svgEl("g", {"class": "axes"}, svg);
  ticks(y0, y1, 5).forEach(function (v) {
    svgEl("line", {x1: m.l, x2: m.l + iw, y1: sy(v), y2: sy(v), "class": "grid"}, axes);
    svgEl("text", {x: m.l - 6, y: sy(v) + 4, "text-anchor": "end"}, axes).textContent = fmt(v);
  });
  ticks(x0, x1, Math.max(2, Math.floor(iw / 80))).forEach(function (v) {
    svgEl("line", {x1: sx(v), x2: sx(v), y1: m.t + ih, y2: m.t + ih + 4, "class": "tick"}, axes);
    svgEl("text", {x: sx(v), y: m.t + ih + 17, "text-anchor": "middle", "class": "xtick"}, axes).textContent = fmt(v);
  });
  svgEl("text", {x: m.l + iw / 2, y: H - 3, "text-anchor": "middle", "class": "label"}, axes).textContent = this.spec.xlabel || "step";
  svgEl("rect", {x: m.l, y: m.t, width: iw, height: ih, "class": "frame"}, axes);
  var clip = "clip" + (++uid);
  svgEl("rect", {x: m.l, y: m.t, width: iw, height: ih}, svgEl("clipPath", {id: clip}, svg));
  var g = svgEl("g", {"clip-path": "url(#" + clip + ")"}, svg);
  series.forEach(function (s) {
    if (s.lo && s.hi) {
      var up = s.ok.map(function (i) { return sx(s.x[i]).toFixed(1) + "," + sy(s.hi[i]).toFixed(1); });
      var down = s.ok.slice().reverse().map(function (i) { return sx(s.x[i]).toFixed(1) + "," + sy(s.lo[i]).toFixed(1); });
      svgEl("path", {d: "M" + up.concat(down).join("L") + "Z", fill: s.color, "fill-opacity": 0.12, stroke: "none"}, g);
    }
    var d = "", prev = -2;
    s.ok.forEach(function (i) { d += (i === prev + 1 ? "L" : "M") + sx(s.x[i]).toFixed(1) + "," + sy(s.y[i]).toFixed(1); prev = i; });
    svgEl("path", {d: d, "class": "line", stroke: s.color, "stroke-width": s.width || 1.5, "stroke-opacity": s.opacity || 1,
                   "stroke-dasharray": s.dash || "none", fill: "none", "data-series": s.name, "data-points": s.ok.length}, g);
    if (s.markers) s.ok.forEach(function (i) { svgEl("circle", {cx: sx(s.x[i]), cy: sy(s.y[i]), r: 2.5, fill: s.color}, g); });
  });
  (this.spec.marks || []).forEach(function (mk) {  // the guards' stop and best step: a labelled vertical line
    if (mk.x < x0 || mk.x > x1) return;
    var gm = svgEl("g", {"class": "mark " + mk.kind, "data-step": mk.x}, svg);
    svgEl("line", {x1: sx(mk.x), x2: sx(mk.x), y1: m.t, y2: m.t + ih}, gm);
    svgEl("text", {x: sx(mk.x) + 4, y: m.t + (mk.kind === "stop" ? 12 : 26)}, gm).textContent = mk.label;
  });
  this.hover = svgEl("g", {"class": "hover"}, svg);
  this.sel = svgEl("rect", {y: m.t, height: ih, width: 0, "class": "sel"}, svg);
  this.overlay = svgEl("rect", {x: m.l, y: m.t, width: iw, height: ih, "class": "overlay"}, svg);
  this.sy = sy;
  this.listen();
};
Chart.prototype.listen = function () {
  var self = this, o = this.overlay;
  function px(ev) { var r = self.svg.getBoundingClientRect(); return Math.min(Math.max(ev.clientX - r.left, self.m.l), self.m.l + self.iw); }
  function val(p) { return self.x0 + (p - self.m.l) / self.iw * (self.x1 - self.x0); }
  o.addEventListener("mousedown", function (ev) { ev.preventDefault(); self.drag = px(ev); });
  o.addEventListener("mousemove", function (ev) {
    var p = px(ev);
    if (self.drag !== null) {
      self.sel.setAttribute("x", Math.min(p, self.drag)); self.sel.setAttribute("width", Math.abs(p - self.drag));
    }
    self.showHover(val(p), ev);
  });
  o.addEventListener("mouseleave", function () { self.hideHover(); });
  o.addEventListener("dblclick", function () { self.zoom = null; self.render(); });
  o.addEventListener("mouseup", function (ev) {
    if (self.drag === null) return;
    var a = self.drag, b = px(ev); self.drag = null; self.sel.setAttribute("width", 0);
    if (Math.abs(b - a) < 5) return;  // a click, not a drag
    self.zoom = [val(Math.min(a, b)), val(Math.max(a, b))];
    self.render();
  });
};
Chart.prototype.hideHover = function () {
  while (this.hover.firstChild) this.hover.removeChild(this.hover.firstChild);
  this.tip.style.display = "none";
};
Chart.prototype.showHover = function (x, ev) {
  this.hideHover();
  var self = this, hits = [];
  this.visible().forEach(function (s) {
    var xs = s.ok.map(function (i) { return s.x[i]; }), k = s.ok[nearest(xs, x)];
    hits.push({s: s, x: s.x[k], y: s.y[k]});
  });
  if (!hits.length) return;
  var best = hits.reduce(function (a, h) { return Math.abs(h.x - x) < Math.abs(a.x - x) ? h : a; });
  svgEl("line", {x1: this.sx(best.x), x2: this.sx(best.x), y1: this.m.t, y2: this.m.t + this.ih, "class": "cursor"}, this.hover);
  this.tip.textContent = "";
  htmlEl("div", "tip-head", this.tip, (this.spec.xlabel || "step") + " " + fmt(best.x));
  hits.forEach(function (h) {
    svgEl("circle", {cx: self.sx(h.x), cy: self.sy(h.y), r: 3.5, fill: h.s.color, stroke: "#fff"}, self.hover);
    var row = htmlEl("div", "tip-row", self.tip);
    var sw = htmlEl("span", "swatch", row); sw.style.background = h.s.color;
    htmlEl("span", "", row, h.s.name + ": " + fmt(h.y) + (h.x !== best.x ? " (step " + fmt(h.x) + ")" : ""));
  });
  var r = this.box.getBoundingClientRect(), left = ev.clientX - r.left + 14;
  this.tip.style.display = "block";
  if (left + this.tip.offsetWidth > r.width) left = ev.clientX - r.left - this.tip.offsetWidth - 14;
  this.tip.style.left = Math.max(0, left) + "px";
  this.tip.style.top = Math.max(0, ev.clientY - r.top - 10) + "px";
};

var charts = [];
document.querySelectorAll("[data-chart]").forEach(function (root) {
  var key = root.getAttribute("data-chart"), chart;
  if (key === "other") {
    var pick = root.parentNode.querySelector("select.metric");
    chart = new Chart(root, DATA.other[pick.value]);
    pick.addEventListener("change", function () { chart.setSpec(DATA.other[pick.value]); });
  } else {
    chart = new Chart(root, DATA.charts[key]);
  }
  charts.push(chart);
});
var resizeTimer = null;
window.addEventListener("resize", function () {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(function () { charts.forEach(function (c) { c.render(); }); }, 100);
});

document.querySelectorAll(".grids").forEach(function (box) {
  var grids = DATA.runs[+box.getAttribute("data-run")][box.getAttribute("data-kind")];
  var slider = box.querySelector("input[type=range]"), img = box.querySelector("img.grid"),
      label = box.querySelector(".grid-step"), play = box.querySelector("button.play"), timer = null;
  function show(i) {
    img.src = grids[i].src; img.setAttribute("data-step", grids[i].step);
    label.textContent = "step " + grids[i].step + " (" + (i + 1) + " of " + grids.length + ")";
  }
  slider.addEventListener("input", function () { show(+slider.value); });
  play.addEventListener("click", function () {
    if (timer) { clearInterval(timer); timer = null; play.textContent = "play"; return; }
    play.textContent = "pause";
    timer = setInterval(function () {
      slider.value = (+slider.value + 1) % grids.length; show(+slider.value);
    }, 700);
  });
  show(+slider.value);
});
})();
"""

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2330; margin: 0; background: #f5f6f8; }
main { max-width: 1100px; margin: 0 auto; padding: 18px 22px 60px; }
h1 { font-size: 22px; margin: 8px 0 2px; } h2 { font-size: 17px; margin: 26px 0 8px; } h3 { font-size: 15px; }
.sub { color: #5a6372; margin-bottom: 12px; }
section, details.run { background: #fff; border: 1px solid #dde1e7; border-radius: 8px; padding: 10px 16px 14px; margin: 14px 0; }
details.run > summary { font-weight: 600; font-size: 16px; cursor: pointer; padding: 4px 0; }
table { border-collapse: collapse; margin: 6px 0; } td, th { border: 1px solid #dde1e7; padding: 3px 9px; text-align: left; vertical-align: top; }
th { background: #f0f2f5; }
pre { background: #f3f4f7; border: 1px solid #e2e5ea; border-radius: 6px; padding: 8px 10px; overflow-x: auto; font-size: 12.5px; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr)); gap: 12px; }
.chart-box { border: 1px solid #e2e5ea; border-radius: 6px; padding: 6px 8px; background: #fff; }
.chart-head { display: flex; justify-content: space-between; align-items: center; font-weight: 600; }
.reset { font-size: 12px; visibility: hidden; }
.legend { font-size: 12px; margin: 2px 0 0; } .legend .item { margin-right: 12px; cursor: pointer; user-select: none; }
.legend .item.off { opacity: 0.35; text-decoration: line-through; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 4px; vertical-align: -1px; }
.plot { position: relative; }
svg.chart { display: block; font-size: 11px; user-select: none; }
svg .grid { stroke: #e6e8ec; } svg .tick { stroke: #9aa2ae; } svg .frame { fill: none; stroke: #c9ced6; }
svg .overlay { fill: transparent; cursor: crosshair; } svg .sel { fill: #3b7ddd; fill-opacity: 0.15; }
svg .cursor { stroke: #7b8494; stroke-dasharray: 3 3; }
svg .mark line { stroke-width: 1.5; stroke-dasharray: 4 3; } svg .mark.stop line { stroke: #c0392b; } svg .mark.best line { stroke: #2a9d55; }
svg .mark.stop text { fill: #c0392b; font-weight: 600; } svg .mark.best text { fill: #2a7d45; } svg text { fill: #4b5361; }
.tip { position: absolute; display: none; pointer-events: none; background: rgba(255,255,255,0.96); border: 1px solid #c9ced6;
       border-radius: 5px; padding: 4px 8px; font-size: 12px; white-space: nowrap; box-shadow: 0 2px 6px rgba(0,0,0,0.12); }
.tip-head { font-weight: 600; }
.pictures { display: flex; flex-wrap: wrap; gap: 10px 28px; align-items: flex-start; } .pictures > div { flex: 1 1 420px; min-width: 0; }
.grid-controls { display: flex; gap: 10px; align-items: center; margin: 6px 0; }
.grid-controls input { flex: 1; }
img.grid, img.pair { display: block; max-width: 100%; height: auto; image-rendering: pixelated; border: 1px solid #e2e5ea; }
img.grid { max-height: 85vh; width: auto; } img.pair { width: 100%; }
.pairs { display: flex; gap: 14px; align-items: flex-start; } .pairs figure { margin: 0; flex: 1 1 0; min-width: 0; }
figcaption, .note { color: #5a6372; font-size: 12.5px; }
.card { border-left: 3px solid #dde1e7; padding-left: 12px; }
"""
