// Pure functions of the map: projection, colour scales, legends, bin summaries. No DOM,
// no Leaflet: tests load this file alone into a blank page and call it.
"use strict";

(function (root) {
  // CAQI classes: upper bounds are closed ("0-25"), as aircast.aqi._category reads them;
  // the colours are the CiteairII ones. 1 h and 24 h indices share the classes.
  const CAQI = [
    [25, "#79bc6a", "very low"],
    [50, "#bbcf4c", "low"],
    [75, "#eec20b", "medium"],
    [100, "#f29305", "high"],
    [Infinity, "#e8416f", "very high"],
  ];
  const STALE = "#8d939a";
  const NO_VALUE = "#d6d9dc";
  // A sequential ramp (viridis stops) for every measure without an index; temperature
  // gets a blue-to-red ramp because readers expect cold blue, hot red.
  const VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725"];
  const THERMAL = ["#313695", "#4575b4", "#74add1", "#abd9e9", "#e0f3f8", "#fee090", "#fdae61", "#f46d43", "#d73027", "#a50026"];
  const STEPS = 16;  // colour buckets of a sequential scale (one canvas path per bucket)

  // The six measures of the switch, in its order. `domain` is in display units; a
  // `factor` converts the API's unit to the display unit (Pa → hPa).
  const MEASURES = {
    P2: { short: "PM2.5", index: "caqi" },
    P1: { short: "PM10", index: "caqi" },
    temperature: { short: "Temperature", domain: [-10, 35], ramp: THERMAL },
    humidity: { short: "Humidity", domain: [20, 100], ramp: VIRIDIS },
    pressure_at_sealevel: { short: "Pressure", domain: [980, 1040], factor: 0.01, unit: "hPa", ramp: VIRIDIS },
    noise_LAeq: { short: "Noise", domain: [35, 85], ramp: VIRIDIS },
  };
  const SWITCH = Object.keys(MEASURES);

  // Web Mercator, in Leaflet's zoom-0 pixels (a 256 px world): x = 256 (lon + 180) / 360.
  const MAX_LAT = 85.0511287798;
  function mercator(lat, lon) {
    const phi = Math.max(-MAX_LAT, Math.min(MAX_LAT, lat)) * Math.PI / 180;
    return [256 * (0.5 + lon / 360), 256 * (0.5 - Math.log(Math.tan(Math.PI / 4 + phi / 2)) / (2 * Math.PI))];
  }

  function caqiClass(value) {
    for (let k = 0; k < CAQI.length; k++) if (value <= CAQI[k][0]) return k;
    return CAQI.length - 1;
  }

  function hexToRgb(hex) {
    const n = parseInt(hex.slice(1), 16);
    return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
  }

  function rampColour(stops, t) {
    const u = Math.max(0, Math.min(1, t)) * (stops.length - 1);
    const k = Math.min(stops.length - 2, Math.floor(u));
    const a = hexToRgb(stops[k]), b = hexToRgb(stops[k + 1]);
    const f = u - k;
    return "#" + a.map((c, i) => Math.round(c + (b[i] - c) * f).toString(16).padStart(2, "0")).join("");
  }

  function quantile(sorted, q) {
    if (!sorted.length) return null;
    const pos = (sorted.length - 1) * q, lo = Math.floor(pos), hi = Math.ceil(pos);
    return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
  }

  function median(values) {
    return quantile(Float64Array.from(values).sort(), 0.5);
  }

  // How a layer (one /v1/map response) is coloured: for PM the CAQI of the 1 h mean (or
  // the 24 h mean), otherwise the 1 h mean on a sequential scale, the latest reading
  // where no 1 h mean exists yet. Returns the scale: what a sensor's score is, its
  // colour bucket, the bucket colours and the legend.
  function scaleFor(layer, period) {
    const spec = MEASURES[layer.measure] || {};
    if (layer.index === "caqi") {
      const column = period === "24h" ? layer.aqi_24h : layer.aqi_1h;
      return {
        kind: "caqi",
        period: period === "24h" ? "24h" : "1h",
        colours: CAQI.map((c) => c[1]),
        score: (i) => column[i],
        bucket: (score) => caqiClass(score),
        format: (score) => `CAQI ${Math.round(score)} (${CAQI[caqiClass(score)][2]})`,
        legend: legendCaqi(layer, period),
      };
    }
    const factor = spec.factor || 1;
    const unit = spec.unit || layer.unit;
    let domain = spec.domain;
    const score = (i) => {
      const v = layer.mean_1h[i] ?? layer.value[i];
      return v === null || v === undefined ? null : v * factor;
    };
    if (!domain) {  // a measure outside the switch: the data's 2nd to 98th percentile
      const seen = [];
      for (let i = 0; i < layer.count; i++) { const s = score(i); if (s !== null) seen.push(s); }
      const sorted = Float64Array.from(seen).sort();
      domain = [quantile(sorted, 0.02) ?? 0, quantile(sorted, 0.98) ?? 1];
      if (domain[1] <= domain[0]) domain = [domain[0], domain[0] + 1];
    }
    const ramp = spec.ramp || VIRIDIS;
    const colours = Array.from({ length: STEPS }, (_, k) => rampColour(ramp, (k + 0.5) / STEPS));
    const [lo, hi] = domain;
    return {
      kind: "sequential",
      period: "1h",
      colours,
      score,
      bucket: (s) => Math.max(0, Math.min(STEPS - 1, Math.floor((s - lo) / (hi - lo) * STEPS))),
      format: (s) => `${formatNumber(s)} ${unit}`,
      legend: {
        title: `${layer.label} (${unit}), 1 h mean`,
        gradient: Array.from({ length: 11 }, (_, k) => rampColour(ramp, k / 10)),
        ticks: [lo, (lo + hi) / 2, hi].map((v) => formatNumber(v)),
        unit,
      },
    };
  }

  function legendCaqi(layer, period) {
    const p = period === "24h" ? "24 h" : "1 h";
    return {
      title: `${layer.label}: CAQI of the ${p} mean`,
      classes: CAQI.map(([upper, colour, name], k) => ({
        colour,
        label: `${name} (${k === 0 ? 0 : CAQI[k - 1][0]}${upper === Infinity ? "+" : "–" + upper})`,
      })),
    };
  }

  function formatNumber(v) {
    if (v === null || v === undefined || !Number.isFinite(v)) return "–";
    const a = Math.abs(v);
    return a >= 1000 ? v.toFixed(0) : a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : v.toFixed(2);
  }

  // Per sensor: its colour bucket (index into scale.colours), or -1 stale, -2 no value.
  // A sensor is stale when its latest reading is older than the layer's stale_after_s.
  function buckets(layer, scale) {
    const out = new Int8Array(layer.count);
    const oldest = layer.generated_at - layer.stale_after_s;
    for (let i = 0; i < layer.count; i++) {
      if (layer.time[i] < oldest) { out[i] = -1; continue; }
      const s = scale.score(i);
      out[i] = s === null || s === undefined ? -2 : scale.bucket(s);
    }
    return out;
  }

  // A hexagon's colour: the median score of its fresh sensors (robust to one broken
  // sensor); grey when all are stale, light grey when none has a value.
  function binSummary(indices, bucketOf, scale) {
    const scores = [];
    let stale = 0;
    for (const i of indices) {
      if (bucketOf[i] === -1) stale++;
      else if (bucketOf[i] >= 0) scores.push(scale.score(i));
    }
    if (scores.length) {
      const m = median(scores);
      return { bucket: scale.bucket(m), score: m, fresh: scores.length, stale };
    }
    return { bucket: stale ? -1 : -2, score: null, fresh: 0, stale };
  }

  function colourOf(bucket, scale) {
    return bucket === -1 ? STALE : bucket === -2 ? NO_VALUE : scale.colours[bucket];
  }

  function ago(seconds) {
    if (seconds < 90) return `${Math.max(0, Math.round(seconds))} s ago`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
    if (seconds < 172800) return `${Math.round(seconds / 3600)} h ago`;
    return `${Math.round(seconds / 86400)} days ago`;
  }

  // An API error body's detail as one line (FastAPI's 422 gives a list of problems).
  function detailText(detail) {
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) return detail.map((d) => (d && d.msg) || JSON.stringify(d)).join("; ");
    return JSON.stringify(detail);
  }

  root.aircastScales = {
    CAQI, STALE, NO_VALUE, MEASURES, SWITCH, mercator, caqiClass, rampColour, median, quantile,
    scaleFor, buckets, binSummary, colourOf, formatNumber, ago, detailText,
  };
})(typeof window !== "undefined" ? window : globalThis);
