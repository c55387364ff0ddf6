// Draws the dashboard's charts from the JSON each page carries next to its tables.
// Runs on first load and after every htmx swap; no data is fetched from anywhere else.
(function () {
  "use strict";
  // Three significant digits below a dollar: ticks of $0.015 and $0.02 must not both read $0.02.
  var money = function (v) {
    if (v === 0) return "$0";
    if (Math.abs(v) >= 1) return "$" + v.toFixed(2);
    return "$" + Number(v.toPrecision(3));
  };

  function options(kind, canvas) {
    var stacked = kind === "stacked";
    var isMoney = stacked;
    return {
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      interaction: { mode: "index", intersect: false },
      plugins: {
        legend: { position: "bottom", labels: { boxWidth: 12, boxHeight: 12 } },
        tooltip: isMoney ? { callbacks: { label: function (c) { return c.dataset.label + ": " + money(c.parsed.y); } } } : {}
      },
      scales: {
        x: { stacked: stacked, grid: { display: false }, ticks: { maxRotation: 0, autoSkipPadding: 12 } },
        y: { stacked: stacked, beginAtZero: true, ticks: isMoney ? { callback: money } : {} }
      },
      // A minute without requests has no latency or error rate: the line stops there rather
      // than inventing values across the gap, and is drawn straight between measured points.
      spanGaps: false,
      elements: { point: { radius: 2, hitRadius: 6 }, line: { borderWidth: 2, tension: 0 } }
    };
  }

  function draw(root) {
    if (typeof Chart === "undefined") return;
    Object.values(Chart.instances).forEach(function (chart) {
      if (!chart.canvas.isConnected) chart.destroy();
    });
    (root || document).querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      if (Chart.getChart(canvas)) return;
      var source = document.getElementById(canvas.dataset.chart);
      if (!source) return;
      var data = JSON.parse(source.textContent);
      var kind = canvas.dataset.kind;
      data.datasets.forEach(function (d) {
        if (kind === "line") { d.backgroundColor = d.borderColor; d.fill = false; }
      });
      new Chart(canvas, { type: kind === "stacked" ? "bar" : "line", data: data, options: options(kind, canvas) });
    });
  }

  // "Copy" beside a key shown once: the clipboard, or else the text selected for Ctrl+C.
  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("[data-copy]") : null;
    if (!button) return;
    var field = document.getElementById(button.dataset.copy);
    if (!field) return;
    field.select();
    var done = function () { button.textContent = "Copied"; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(field.value).then(done, function () { button.textContent = "Press Ctrl+C"; });
    } else {
      button.textContent = document.execCommand && document.execCommand("copy") ? "Copied" : "Press Ctrl+C";
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
    Chart.defaults.color = "#555";
    draw(document);
    if (window.htmx) htmx.onLoad(function (el) { draw(el); });
  });
})();
