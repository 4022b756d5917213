// The sensor panel: what a click on a sensor shows. Its latest readings (and those of
// the sensors at the same place), the history of a measure with the forecast ahead and
// its 80 % interval, the humidity flag in words, and the API URLs behind it all.
"use strict";

(function (root) {
  const S = root.aircastScales;
  const $ = (id) => document.getElementById(id);
  const HUMID_TEXT =
    "Humidity at this place is above 70 %. Optical PM sensors (SDS011 and similar) " +
    "over-read in humid air because the particles take up water and grow: read these " +
    "PM values as too high.";
  let plot = null;
  let current = null;  // {id, measure}: answers for an older click are dropped

  function link(path, text) {
    const a = document.createElement("a");
    a.href = `${root.aircastApi}${path}`;
    a.textContent = text || `${path}`;
    a.target = "_blank";
    a.rel = "noopener";
    return a;
  }

  function row(cells, tag = "td") {
    const tr = document.createElement("tr");
    for (const c of cells) {
      const td = document.createElement(tag);
      if (c instanceof Node) td.appendChild(c); else td.textContent = c;
      tr.appendChild(td);
    }
    return tr;
  }

  // `entry`: the sensor as the map layer has it (id, lat, lon, city, value, means, aqi).
  async function open(entry, measure, getJSON) {
    current = { id: entry.id, measure };
    $("hint").hidden = true;
    const details = $("details");
    details.hidden = false;
    details.dataset.sensor = String(entry.id);
    $("title").textContent = `Sensor ${entry.id}`;
    $("place").textContent = `${entry.city || "unknown place"} · ${entry.lat.toFixed(4)}, ${entry.lon.toFixed(4)}`;
    $("summary").textContent = entry.summary;
    $("flag").hidden = true;
    $("flag").textContent = "";
    $("latest").innerHTML = "";
    const links = $("api-links");
    links.innerHTML = "";
    const base = `/v1/sensors/${entry.id}`;
    const li = (a) => { const item = document.createElement("li"); item.appendChild(a); links.appendChild(item); };
    li(link(`${base}/readings?measure=${measure}&resolution=10m`, `${base}/readings?measure=${measure}&resolution=10m`));
    li(link(`${base}/forecast?measure=${measure}`, `${base}/forecast?measure=${measure}`));
    const near = `/v1/sensors?near=${entry.lat},${entry.lon}&radius_km=0.05`;
    li(link(near, `${near} (every sensor at this place)`));
    await Promise.all([showLatest(entry, getJSON, near), showMeasure(entry, measure, getJSON)]);
  }

  // The latest value of every measure at this place: the clicked sensor and the
  // sensors beside it (a PM sensor usually shares its place with a humidity sensor).
  async function showLatest(entry, getJSON, near) {
    const table = $("latest");
    let sensors;
    try {
      const body = await getJSON(near);
      sensors = body.sensors || [];
    } catch (err) {
      table.appendChild(row([`latest readings unavailable (${err.message})`]));
      return;
    }
    if (current === null || current.id !== entry.id) return;
    table.appendChild(row(["measure", "latest", "when", "sensor"], "th"));
    const caption = document.createElement("caption");
    caption.textContent = "Latest at this place (click a row for its chart)";
    table.prepend(caption);
    const now = Date.now() / 1000;
    let flagged = false;
    for (const s of sensors) {
      for (const [name, v] of Object.entries(s.latest || {})) {
        const label = (root.aircastConfig.measures[name] || {}).label || name;
        const tr = row([label, `${S.formatNumber(v.value)} ${v.unit}`, S.ago(now - v.time), `${s.id} (${s.sensor_type})`]);
        tr.dataset.measure = name;
        tr.dataset.sensor = String(s.id);
        tr.title = "show its history and forecast";
        tr.addEventListener("click", () => {
          current = { id: s.id, measure: name };
          showMeasure({ id: s.id }, name, getJSON);
        });
        if (s.id === entry.id) tr.classList.add("this-sensor");
        table.appendChild(tr);
        if ((v.flags || []).includes("humidity_above_70")) flagged = true;
      }
    }
    const clicked = sensors.find((s) => s.id === entry.id);
    if (flagged || (clicked && (clicked.flags || []).includes("humidity_above_70"))) {
      const humidity = sensors.map((s) => s.latest && s.latest.humidity).find(Boolean);
      $("flag").textContent = `⚑ ${HUMID_TEXT}` + (humidity ? ` (relative humidity ${S.formatNumber(humidity.value)} %)` : "");
      $("flag").hidden = false;
    }
  }

  async function showMeasure(entry, measure, getJSON) {
    const chart = $("chart");
    const note = $("forecast-note");
    chart.dataset.ready = "0";
    const q = `measure=${encodeURIComponent(measure)}`;
    let readings;
    try {
      readings = await getJSON(`/v1/sensors/${entry.id}/readings?${q}&resolution=10m`);
      if (!readings.points.length) readings = await getJSON(`/v1/sensors/${entry.id}/readings?${q}&resolution=raw`);
    } catch (err) {
      note.textContent = `no history (${err.message})`;
      chart.dataset.ready = "1";
      return;
    }
    let forecast = null;
    const table = $("forecast");
    table.innerHTML = "";
    try {
      forecast = await getJSON(`/v1/sensors/${entry.id}/forecast?${q}`);
      note.textContent = `Forecast by ${forecast.served_by === "model" ? "the model" : "a baseline"} ` +
        `(${forecast.model.kind} ${forecast.model.version}, skill vs persistence ${forecast.model.skill.toFixed(2)})` +
        `${forecast.note ? ": " + forecast.note : ""}`;
      table.appendChild(row(["ahead", "forecast", "80 % interval"], "th"));
      for (const p of forecast.points) {
        const interval = p.low !== null && p.low !== undefined && p.high !== null && p.high !== undefined
          ? `${S.formatNumber(p.low)} – ${S.formatNumber(p.high)}` : "not given";
        const tr = row([p.horizon, `${S.formatNumber(p.value)} ${forecast.unit}`, interval]);
        tr.dataset.horizon = p.horizon;
        table.appendChild(tr);
      }
    } catch (err) {
      note.textContent = `no forecast (${err.message})`;
    }
    if (current === null || current.id !== entry.id || current.measure !== measure) return;
    drawChart(chart, readings, forecast);
  }

  function drawChart(chart, readings, forecast) {
    const observed = new Map(readings.points.map((p) => [p.time, p.value]));
    const ahead = new Map(), low = new Map(), high = new Map();
    if (forecast && forecast.points.length) {
      // The forecast starts at the last observation so the two lines meet.
      const last = observed.get(forecast.based_on);
      if (last !== undefined) { ahead.set(forecast.based_on, last); low.set(forecast.based_on, last); high.set(forecast.based_on, last); }
      for (const p of forecast.points) {
        ahead.set(p.time, p.value);
        if (p.low !== null && p.low !== undefined) low.set(p.time, p.low);
        if (p.high !== null && p.high !== undefined) high.set(p.time, p.high);
      }
    }
    const xs = [...new Set([...observed.keys(), ...ahead.keys()])].sort((a, b) => a - b);
    const col = (m) => xs.map((x) => m.get(x) ?? null);
    const data = [xs, col(observed), col(ahead), col(high), col(low)];
    if (plot) plot.destroy();
    chart.innerHTML = "";
    const label = (root.aircastConfig.measures[readings.measure] || {}).label || readings.measure;
    plot = new uPlot({
      width: chart.clientWidth || 400,
      height: 240,
      title: `${label} (${readings.unit})`,
      scales: { x: { time: true } },
      series: [
        {},
        { label: readings.resolution === "raw" ? "readings" : "10-min mean", stroke: "#1f6fb2", width: 2, spanGaps: false },
        { label: "forecast", stroke: "#d9480f", width: 2, dash: [6, 4], points: { show: true, size: 6 }, spanGaps: true },
        { label: "80 % high", stroke: "rgba(217, 72, 15, 0.35)", width: 1, spanGaps: true },
        { label: "80 % low", stroke: "rgba(217, 72, 15, 0.35)", width: 1, spanGaps: true },
      ],
      bands: [{ series: [3, 4], fill: "rgba(217, 72, 15, 0.15)" }],
    }, data, chart);
    chart.dataset.measure = readings.measure;
    chart.dataset.points = String(observed.size);
    chart.dataset.forecast = String(forecast ? forecast.points.length : 0);
    chart.dataset.interval = String(low.size && high.size ? Math.min(low.size, high.size) - 1 : 0);
    chart.dataset.ready = "1";
  }

  function close() {
    current = null;
    $("details").hidden = true;
    $("hint").hidden = false;
  }

  root.aircastPanel = { open, close, HUMID_TEXT };
})(window);
