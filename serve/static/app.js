// aircast dashboard: sensors on a map coloured by CAQI; a click shows the readings
// with the forecast ahead of them. Plain browser JavaScript, vendored Leaflet + uPlot,
// no network beyond this app (map tiles only when the server configures a tile URL).
"use strict";

const API = "..";  // the app root, relative to /ui/
const CAQI_COLOURS = [[25, "#79bc6a"], [50, "#bbcf4c"], [75, "#eec20b"], [100, "#f29305"]];
const NO_PM = "#9aa0a6";
let config = { measures: {} };
let selected = null;
let plot = null;

function colour(sensor) {
  const caqi = sensor.aqi && sensor.aqi.caqi;
  if (!caqi) return NO_PM;
  for (const [upper, c] of CAQI_COLOURS) if (caqi.value <= upper) return c;
  return "#e8416f";
}

async function getJSON(path) {
  const response = await fetch(`${API}${path}`);
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail; } catch (e) { /* not JSON */ }
    throw new Error(`${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  }
  return response.json();
}

function drawGrid(map) {
  // Offline background: a 10° graticule instead of tiles.
  const style = { color: "#b8c4ce", weight: 1, interactive: false };
  for (let lat = -80; lat <= 80; lat += 10) {
    L.polyline([[lat, -180], [lat, 180]], style).addTo(map);
  }
  for (let lon = -180; lon <= 180; lon += 10) {
    L.polyline([[-85, lon], [85, lon]], style).addTo(map);
  }
}

const map = L.map("map", { worldCopyJump: true, preferCanvas: false }).setView([50, 10], 4);
const markers = L.layerGroup().addTo(map);

async function loadSensors(fit) {
  const status = document.getElementById("status");
  try {
    const data = await getJSON("/sensors");
    markers.clearLayers();
    const bounds = [];
    for (const s of data.sensors) {
      if (s.latitude === null || s.longitude === null) continue;
      const marker = L.circleMarker([s.latitude, s.longitude], {
        radius: 8, color: "#333", weight: 1, fillColor: colour(s), fillOpacity: 0.9,
        className: "sensor-marker",
      });
      marker.bindTooltip(`sensor ${s.id} · ${s.place.city || "?"}`);
      marker.on("click", () => showSensor(s));
      marker.addTo(markers);
      if (marker._path) marker._path.setAttribute("data-sensor", String(s.id));
      bounds.push([s.latitude, s.longitude]);
    }
    status.textContent = `${data.count} sensors · updated ${new Date(data.generated_at * 1000).toLocaleTimeString()}`;
    document.body.dataset.sensors = String(data.count);
    if (fit && bounds.length) map.fitBounds(bounds, { padding: [40, 40], maxZoom: 11 });
  } catch (err) {
    status.textContent = `cannot load sensors (${err.message})`;
  }
}

function showSensor(sensor) {
  selected = sensor;
  document.getElementById("hint").hidden = true;
  document.getElementById("details").hidden = false;
  document.getElementById("title").textContent = `Sensor ${sensor.id} (${sensor.sensor_type})`;
  const p = sensor.place;
  document.getElementById("place").textContent =
    [p.city, p.country].filter(Boolean).join(", ") + ` · ${sensor.latitude.toFixed(3)}, ${sensor.longitude.toFixed(3)}`;
  const a = sensor.aqi;
  const parts = [];
  if (a.caqi) parts.push(`CAQI ${a.caqi.value} (${a.caqi.category})`);
  if (a.us_epa) parts.push(`US AQI ${a.us_epa.value} (${a.us_epa.category})`);
  if (sensor.flags.length) parts.push(`<span class="flag">⚑ ${sensor.flags.join(", ")}</span>`);
  document.getElementById("aqi").innerHTML = parts.join(" · ") || "no PM readings";
  const tabs = document.getElementById("measures");
  tabs.innerHTML = "";
  const names = Object.keys(sensor.latest);
  const first = ["P2", "P1"].find((m) => names.includes(m)) || names[0];
  for (const name of names) {
    const b = document.createElement("button");
    b.textContent = (config.measures[name] && config.measures[name].label) || name;
    b.dataset.measure = name;
    b.addEventListener("click", () => showMeasure(sensor, name));
    tabs.appendChild(b);
  }
  if (first) showMeasure(sensor, first);
}

async function showMeasure(sensor, measure) {
  for (const b of document.querySelectorAll("#measures button")) {
    b.classList.toggle("active", b.dataset.measure === measure);
  }
  const chart = document.getElementById("chart");
  const note = document.getElementById("forecast-note");
  chart.dataset.ready = "0";
  const query = `measure=${encodeURIComponent(measure)}`;
  let readings = await getJSON(`/sensors/${sensor.id}/readings?${query}&resolution=10m`);
  if (!readings.points.length) readings = await getJSON(`/sensors/${sensor.id}/readings?${query}&resolution=raw`);
  let forecast = null;
  try {
    forecast = await getJSON(`/sensors/${sensor.id}/forecast?${query}`);
    note.textContent = `forecast: ${forecast.served_by === "model" ? "model" : "baseline"} ` +
      `${forecast.model.kind} ${forecast.model.version}, skill vs persistence ` +
      `${forecast.model.skill.toFixed(2)}${forecast.note ? " — " + forecast.note : ""}`;
  } catch (err) {
    note.textContent = `no forecast (${err.message})`;
  }
  if (selected !== sensor) return;
  drawChart(chart, measure, readings, forecast);
}

function drawChart(chart, measure, readings, forecast) {
  const observed = new Map(readings.points.map((p) => [p.time, p.value]));
  const ahead = new Map();
  if (forecast && forecast.points.length) {
    // Join the forecast to the last observation so the two lines meet.
    ahead.set(forecast.based_on, observed.get(forecast.based_on) ?? null);
    for (const p of forecast.points) ahead.set(p.time, p.value);
  }
  const xs = [...new Set([...observed.keys(), ...ahead.keys()])].sort((a, b) => a - b);
  const data = [xs, xs.map((x) => observed.get(x) ?? null), xs.map((x) => ahead.get(x) ?? null)];
  const unit = readings.unit;
  if (plot) plot.destroy();
  chart.innerHTML = "";
  plot = new uPlot({
    width: chart.clientWidth || 400,
    height: 260,
    title: `${measure} (${unit})`,
    scales: { x: { time: true } },
    series: [
      {},
      { label: readings.resolution === "raw" ? "readings" : "10-min mean", stroke: "#1f6fb2", width: 2, spanGaps: false },
      { label: "forecast", stroke: "#d9480f", width: 2, dash: [6, 4], points: { show: true, size: 6 }, spanGaps: true },
    ],
  }, data, chart);
  chart.dataset.measure = measure;
  chart.dataset.points = String(observed.size);
  chart.dataset.forecast = String(forecast ? forecast.points.length : 0);
  chart.dataset.ready = "1";
}

async function start() {
  try {
    config = await getJSON("/dashboard/config");
  } catch (err) { /* defaults */ }
  if (config.tile_url) {
    L.tileLayer(config.tile_url, { attribution: config.tile_attribution || "", maxZoom: 18 }).addTo(map);
  } else {
    drawGrid(map);
  }
  await loadSensors(true);
  setInterval(() => loadSensors(false), 60000);
}

start();
