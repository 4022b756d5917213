// aircast live map: the whole network from GET /v1/map on one canvas (hexagons at low
// zoom, one dot per sensor zoomed in) over an offline Natural Earth basemap, or over
// map tiles when the server configures a tile URL. A click opens the sensor panel.
//
// The page signals its state for people and for tests: #message (data-kind = error,
// empty or none), body[data-rendered] = sensors drawn in the last draw, body[data-draws]
// = draws so far (a test waits on it after a pan or zoom), and
// performance marks "aircast:data" (layer fetched) and "aircast:rendered" (first full
// draw of the layer: every sensor in view binned or dotted).
"use strict";

(function (root) {
  const S = root.aircastScales;
  const { Basemap, Network } = root.aircastLayers;
  const API = "..";  // the app root, relative to /ui/
  root.aircastApi = API;
  root.aircastConfig = { measures: {} };
  const REFRESH_S = 60;  // the server rebuilds a layer at most every serve.map_cache_s
  const RETRY_S = 30;
  const $ = (id) => document.getElementById(id);

  class ApiError extends Error {
    constructor(status, detail, path) {
      super(status ? `${status}: ${detail}` : detail);
      this.status = status;
      this.detail = detail;
      this.path = path;
    }
  }

  async function getJSON(path, init) {
    let response;
    try {
      response = await fetch(`${API}${path}`, init);
    } catch (err) {
      throw new ApiError(0, `no answer from the API (${err.message})`, path);
    }
    if (!response.ok) {
      let detail = response.statusText || "error";
      try { detail = S.detailText((await response.json()).detail); } catch (e) { /* not JSON */ }
      throw new ApiError(response.status, detail, path);
    }
    return response.json();
  }

  const params = new URLSearchParams(root.location.search);
  const state = {
    measure: params.get("measure") || "P2",
    period: params.get("period") === "24h" ? "24h" : "1h",
    layer: null,
    timer: null,
    rendered: false,
    fitted: false,
  };

  const map = L.map("map", {
    minZoom: 3,
    maxZoom: 16,
    maxBounds: [[-85, -180], [85, 180]],
    maxBoundsViscosity: 1.0,
    worldCopyJump: false,
  }).setView([50, 10], 4);
  map.createPane("basemap").style.zIndex = 150;
  map.createPane("sensors").style.zIndex = 450;
  map.attributionControl.setPrefix('<a href="https://leafletjs.com">Leaflet</a>');
  const network = new Network().addTo(map);

  // -- messages --------------------------------------------------------------------

  function message(kind, text) {
    const box = $("message");
    box.dataset.kind = kind;
    box.textContent = text;
    box.hidden = kind === "none";
  }

  function explain(err) {
    if (err.status === 0) {
      return `The aircast API is not answering (${err.detail}). The map tries again every ${RETRY_S} s.`;
    }
    if (err.status === 422 && err.path.startsWith("/v1/map")) {
      return `Unknown measure “${state.measure}”: ${err.detail}. Pick one of the measures above.`;
    }
    if (err.status >= 500) {
      return `The aircast API cannot answer right now (${err.status}: ${err.detail}). The map tries again every ${RETRY_S} s.`;
    }
    return `The aircast API refused the request (${err.status}: ${err.detail}).`;
  }

  // -- the measure switch and the legend -------------------------------------------

  function buildSwitch() {
    const box = $("measure-switch");
    box.innerHTML = "";
    for (const name of S.SWITCH) {
      const b = document.createElement("button");
      b.type = "button";
      b.dataset.measure = name;
      b.textContent = S.MEASURES[name].short;
      b.title = (root.aircastConfig.measures[name] || {}).label || name;
      b.addEventListener("click", () => selectMeasure(name));
      box.appendChild(b);
    }
    for (const period of ["1h", "24h"]) {
      const b = $(`period-${period}`);
      b.addEventListener("click", () => selectPeriod(period));
    }
    markSwitch();
  }

  function markSwitch() {
    for (const b of $("measure-switch").querySelectorAll("button")) {
      b.classList.toggle("active", b.dataset.measure === state.measure);
      b.setAttribute("aria-pressed", String(b.dataset.measure === state.measure));
    }
    const pm = state.layer ? state.layer.index === "caqi" : ["P1", "P2"].includes(state.measure);
    $("period").hidden = !pm;
    for (const p of ["1h", "24h"]) $(`period-${p}`).classList.toggle("active", state.period === p);
  }

  function drawLegend(scale, layer) {
    const box = $("legend");
    box.innerHTML = "";
    const title = document.createElement("h3");
    title.textContent = scale.legend.title;
    box.appendChild(title);
    const list = document.createElement("ul");
    const item = (colour, text, cls) => {
      const li = document.createElement("li");
      const i = document.createElement("i");
      i.style.background = colour;
      if (cls) i.className = cls;
      li.append(i, text);
      list.appendChild(li);
    };
    if (scale.kind === "caqi") {
      for (const c of scale.legend.classes) item(c.colour, c.label);
    } else {
      const bar = document.createElement("div");
      bar.className = "gradient";
      bar.style.background = `linear-gradient(to right, ${scale.legend.gradient.join(", ")})`;
      const ticks = document.createElement("div");
      ticks.className = "ticks";
      for (const t of scale.legend.ticks) {
        const span = document.createElement("span");
        span.textContent = t;
        ticks.appendChild(span);
      }
      box.append(bar, ticks);
    }
    item(S.STALE, `stale: no reading for ${Math.round(layer.stale_after_s / 60)} min`, "stale");
    item(S.NO_VALUE, scale.kind === "caqi" ? `no ${scale.period === "24h" ? "24 h" : "1 h"} mean yet` : "no value");
    box.appendChild(list);
    const note = document.createElement("p");
    note.className = "note";
    note.textContent = `Hexagons: the median of the sensors inside (stale ones left out); dots from zoom ${network.options.pointsZoom}.`;
    box.appendChild(note);
  }

  // -- data --------------------------------------------------------------------------

  function schedule(seconds) {
    clearTimeout(state.timer);
    state.timer = setTimeout(() => load(), seconds * 1000);
  }

  async function load() {
    const measure = state.measure;
    let layer;
    try {
      // no-cache: revalidate with the ETag (a 304 costs the server nothing).
      layer = await getJSON(`/v1/map?measure=${encodeURIComponent(measure)}`, { cache: "no-cache" });
    } catch (err) {
      if (measure !== state.measure) return;
      message("error", explain(err));
      $("status").textContent = "no data";
      if (err.status === 0 || err.status >= 500) schedule(RETRY_S);
      return;
    }
    if (measure !== state.measure) return;  // the user switched meanwhile
    performance.mark("aircast:data");
    const unchanged = state.layer && state.layer.measure === layer.measure && state.layer.generated_at === layer.generated_at;
    state.layer = layer;
    markSwitch();
    if (!layer.count) {
      network.setLayer(layer, S.scaleFor(layer, state.period));
      message("empty", `No sensor has reported ${layer.label} recently: nothing to show yet. The map looks again every ${RETRY_S} s.`);
      $("status").textContent = `0 sensors · ${layer.label}`;
      document.body.dataset.rendered = "0";
      $("legend").innerHTML = "";
      schedule(RETRY_S);
      return;
    }
    message("none", "");
    if (!unchanged) {
      const scale = S.scaleFor(layer, state.period);
      network.setLayer(layer, scale);
      drawLegend(scale, layer);
      if (!state.fitted) fitNetwork(layer);  // the first layer shown sets the view
    }
    const stale = network.bucketOf.reduce((n, b) => n + (b === -1), 0);
    $("status").textContent = `${layer.count.toLocaleString("en")} sensors · ${layer.label}` +
      `${stale ? ` · ${stale.toLocaleString("en")} stale` : ""} · ${new Date(layer.generated_at * 1000).toLocaleTimeString()}`;
    $("licence").innerHTML = "";
    const a = document.createElement("a");
    a.href = layer.licence.url;
    a.textContent = `${layer.licence.name}, ${layer.licence.attribution}`;
    $("licence").append("Data: ", a);
    schedule(REFRESH_S);
  }

  // The view of the bulk of the network: 1st to 99th percentile of latitude and
  // longitude (a few far-flung sensors must not zoom the whole map out).
  function fitNetwork(layer) {
    const lat = Float64Array.from(layer.lat).sort(), lon = Float64Array.from(layer.lon).sort();
    const q = (a, p) => S.quantile(a, p);
    map.fitBounds([[q(lat, 0.01), q(lon, 0.01)], [q(lat, 0.99), q(lon, 0.99)]], { padding: [20, 20], maxZoom: 11, animate: false });
    state.fitted = true;
    network.redraw();
  }

  let draws = 0;
  network.on("drawn", (e) => {
    if (!state.layer || !state.layer.count) return;
    document.body.dataset.draws = String(++draws);
    document.body.dataset.rendered = String(e.sensors);
    document.body.dataset.mode = e.mode;
    if (!state.rendered) {
      state.rendered = true;
      performance.mark("aircast:rendered");
    }
  });

  function selectMeasure(name) {
    if (name === state.measure) return;
    state.measure = name;
    network.selected = -1;
    setQuery();
    markSwitch();
    $("status").textContent = `loading ${S.MEASURES[name] ? S.MEASURES[name].short : name}…`;
    load();
  }

  function selectPeriod(period) {
    state.period = period;
    setQuery();
    markSwitch();
    if (state.layer && state.layer.count) {
      const scale = S.scaleFor(state.layer, period);
      network.setScale(scale);
      drawLegend(scale, state.layer);
    }
  }

  function setQuery() {
    const q = new URLSearchParams({ measure: state.measure });
    if (state.period === "24h") q.set("period", "24h");
    root.history.replaceState(null, "", `?${q}`);
  }

  // -- pointer -----------------------------------------------------------------------

  const tooltip = L.tooltip({ direction: "top", offset: [0, -8], opacity: 0.95 });

  function entry(i) {
    const l = state.layer;
    const scale = network.scale;
    const score = scale.score(i);
    const fresh = network.bucketOf[i] !== -1;
    const parts = [`${l.label} ${S.formatNumber(l.value[i])} ${l.unit} (latest, ${S.ago(l.generated_at - l.time[i])})`];
    if (l.mean_1h[i] !== null) parts.push(`1 h mean ${S.formatNumber(l.mean_1h[i])}`);
    if (l.mean_24h[i] !== null) parts.push(`24 h mean ${S.formatNumber(l.mean_24h[i])}`);
    if (score !== null && score !== undefined && scale.kind === "caqi") parts.push(`${scale.format(score)} on the ${scale.period === "24h" ? "24 h" : "1 h"} mean`);
    if (!fresh) parts.push("stale");
    return { id: l.id[i], lat: l.lat[i], lon: l.lon[i], city: l.city[i], summary: parts.join(" · ") };
  }

  function describeBin(bin) {
    const s = bin.summary;
    const what = state.layer.label;
    const value = s.score === null ? "no fresh value" : `median ${network.scale.format(s.score)}`;
    return `${bin.length} sensors · ${what} ${value}${s.stale ? ` · ${s.stale} stale` : ""}`;
  }

  let hoverFrame = 0;
  map.on("mousemove", (e) => {
    if (hoverFrame) return;
    hoverFrame = requestAnimationFrame(() => {
      hoverFrame = 0;
      const hit = network.hit(e.containerPoint);
      map.getContainer().style.cursor = hit ? "pointer" : "";
      if (!hit) { map.closeTooltip(tooltip); return; }
      if (hit.kind === "sensor") {
        const i = hit.index;
        tooltip.setLatLng([state.layer.lat[i], state.layer.lon[i]]).setContent(`sensor ${state.layer.id[i]} · ${state.layer.city[i] || "?"}`);
      } else {
        tooltip.setLatLng(map.layerPointToLatLng(L.point(hit.bin.x, hit.bin.y).subtract(map.getPixelOrigin()))).setContent(describeBin(hit.bin));
      }
      map.openTooltip(tooltip);
    });
  });
  map.on("mouseout", () => map.closeTooltip(tooltip));

  map.on("click", (e) => {
    const hit = network.hit(e.containerPoint);
    if (!hit) return;
    if (hit.kind === "bin" && hit.bin.length > 1) {
      const centre = map.layerPointToLatLng(L.point(hit.bin.x, hit.bin.y).subtract(map.getPixelOrigin()));
      map.setView(centre, Math.min(map.getZoom() + 2, network.options.pointsZoom));
      return;
    }
    const i = hit.kind === "sensor" ? hit.index : hit.bin.indices[0];
    network.selected = i;
    network.redraw();
    root.aircastPanel.open(entry(i), state.layer.measure, getJSON);
  });

  // -- start -------------------------------------------------------------------------

  async function basemap(config) {
    if (config.tile_url) {
      L.tileLayer(config.tile_url, { attribution: config.tile_attribution || "© OpenStreetMap contributors", maxZoom: 19 }).addTo(map);
      return;
    }
    const topology = await (await fetch("vendor/world-atlas/countries-50m.json")).json();
    new Basemap(topology).addTo(map);
    map.attributionControl.addAttribution("Natural Earth (public domain)");
  }

  async function start() {
    let config = { measures: {} };
    const configured = getJSON("/dashboard/config").catch(() => null);
    config = (await configured) || config;
    root.aircastConfig = config;
    buildSwitch();
    const drawn = basemap(config).catch((err) => {
      map.attributionControl.addAttribution(`basemap unavailable (${err.message})`);
    });
    await Promise.all([drawn, load()]);
  }

  root.aircast = { map, network, state, load, selectMeasure, selectPeriod };
  start();
})(window);
