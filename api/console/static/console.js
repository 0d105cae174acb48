// The console's script: charts and refresh (overview), the live tail, replay progress, and
// "select all". Plain JavaScript, served from the package; no inline script (the page's CSP).
"use strict";

(function () {
  const page = document.body.dataset.page;

  // --- overview -------------------------------------------------------------------------
  const SERIES = [["accepted", "#0b57a4"], ["stored", "#1d6b35"], ["failed", "#a4161a"]];
  const charts = {};

  function seriesOf(rates) {
    const xs = rates[SERIES[0][0]].map((_, i) => rates.start + i * rates.step);
    return Object.fromEntries(SERIES.map(([name]) => [name, [xs, rates[name]]]));
  }

  function drawCharts(rates) {
    if (!rates || typeof uPlot === "undefined") return;
    const data = seriesOf(rates);
    for (const [name, colour] of SERIES) {
      const box = document.getElementById("chart-" + name);
      if (!box) continue;
      if (charts[name]) { charts[name].setData(data[name]); continue; }
      charts[name] = new uPlot({
        width: Math.max(240, box.clientWidth - 8), height: 170, legend: { show: false },
        series: [{}, { label: name + "/s", stroke: colour, width: 1.5, fill: colour + "22" }],
        axes: [{}, { size: 50 }], scales: { y: { range: (u, min, max) => [0, Math.max(1, max)] } },
      }, data[name], box);
    }
  }

  function overview() {
    const raw = document.getElementById("rates-data");
    drawCharts(raw ? JSON.parse(raw.textContent) : null);
    setInterval(async () => {
      try {
        const answer = await fetch("/console/overview/figures", { headers: { Accept: "application/json" } });
        if (answer.status === 401) { location.href = "/console/sign-in"; return; }
        const body = await answer.json();
        document.getElementById("figures").innerHTML = body.html;
        drawCharts(body.rates);
        document.getElementById("refreshed").textContent = "As of " + new Date().toISOString() + ".";
      } catch (err) {
        document.getElementById("refreshed").textContent = "Refresh failed: " + err;
      }
    }, 5000);
  }

  // --- live tail ------------------------------------------------------------------------
  const MAX_ROWS = 500;

  function tail() {
    const table = document.getElementById("tail");
    const rows = document.getElementById("tail-rows");
    const state = document.getElementById("tail-state");
    const pause = document.getElementById("tail-pause");
    const filter = new URLSearchParams(location.search);
    let source = null;
    let lastId = "";

    function cell(text, cls) {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      return td;
    }

    function show(message) {
      const entry = JSON.parse(message.data);
      for (const [id, project, name, status, code] of entry.events) {
        const tr = document.createElement("tr");
        tr.dataset.eventId = id;
        tr.dataset.status = status;
        tr.append(cell(id, "mono"), cell(project, "mono"), cell(name), cell(status, "status-" + status),
          cell(code), cell(entry.job, "mono"));
        rows.prepend(tr);
      }
      while (rows.children.length > MAX_ROWS) rows.lastElementChild.remove();
    }

    function open() {
      const query = new URLSearchParams();
      for (const name of ["projectId", "eventName"]) if (filter.get(name)) query.set(name, filter.get(name));
      if (lastId) query.set("after", lastId);
      source = new EventSource(table.dataset.streamUrl + "?" + query);
      source.onopen = () => { state.textContent = "live"; };
      source.onmessage = (message) => {
        lastId = message.lastEventId || lastId; state.textContent = "live"; show(message);
      };
      source.addEventListener("outage", () => { state.textContent = "Redis is unreachable: retrying"; });
      source.onerror = () => { state.textContent = "reconnecting…"; };
    }

    pause.addEventListener("click", () => {
      if (source) {
        source.close(); source = null;
        pause.textContent = "Resume"; pause.setAttribute("aria-pressed", "true");
        state.textContent = "paused";
      } else {
        pause.textContent = "Pause"; pause.setAttribute("aria-pressed", "false");
        open();
      }
    });
    open();
  }

  // --- replay progress ------------------------------------------------------------------
  function replay() {
    const box = document.getElementById("replay");
    const bar = document.getElementById("replay-bar");
    const status = document.getElementById("replay-status");
    const outcome = document.getElementById("replay-outcome");
    const timer = setInterval(async () => {
      const answer = await fetch(box.dataset.progressUrl);
      if (!answer.ok) return;
      const p = await answer.json();
      bar.max = Math.max(1, p.expected || 0, p.matched || 0);
      bar.value = p.matched || 0;
      status.dataset.state = p.state;
      status.textContent = p.state + ": matched " + (p.matched || 0) + ", requeued " + (p.requeued || 0)
        + (p.error ? " (" + p.error + ")" : "");
      if (p.state === "done") {
        const failing = Object.entries(p.stillFailing || {}).map(([c, n]) => c + " " + n).join(", ");
        outcome.textContent = "stored " + p.stored + ", still failing " + (failing || "0")
          + ", still queued " + p.stillQueued;
      }
      if (p.state === "done" || p.state === "error") clearInterval(timer);
    }, 1000);
  }

  // --- failed events: select every row ---------------------------------------------------
  function failed() {
    const all = document.getElementById("select-all");
    if (!all) return;
    all.addEventListener("change", () => {
      for (const box of document.querySelectorAll('input[name="ids"]')) box.checked = all.checked;
    });
  }

  const pages = { overview, tail, replay, failed };
  if (pages[page]) pages[page]();
})();
