// Canvas layers for Leaflet: the offline Natural Earth basemap and the sensor network
// (hexagonal bins at low zoom, one dot per sensor when zoomed in). Both keep their
// geometry pre-projected to zoom-0 Web Mercator pixels, so a redraw is a multiply-add
// per point: no Leaflet object per sensor, no SVG node, one canvas path per colour.
"use strict";

(function (root) {
  const S = root.aircastScales;

  // A canvas covering the view plus `padding` of it on each side (drags show drawn
  // content), redrawn on moveend, scaled by CSS during the zoom animation.
  const CanvasLayer = L.Layer.extend({
    options: { pane: "overlayPane", padding: 0.5, className: "" },

    onAdd(map) {
      const animated = map.options.zoomAnimation && L.Browser.any3d;
      this._canvas = L.DomUtil.create("canvas", `aircast-canvas ${this.options.className} ${animated ? "leaflet-zoom-animated" : "leaflet-zoom-hide"}`);
      this.getPane().appendChild(this._canvas);
      this.redraw();
    },

    onRemove() {
      clearTimeout(this._pending);
      L.DomUtil.remove(this._canvas);
      this._canvas = null;
    },

    getEvents() {
      const events = { moveend: this._moved, resize: this._later, viewreset: this._later };
      if (this._map.options.zoomAnimation && L.Browser.any3d) events.zoomanim = this._animateZoom;
      return events;
    },

    // After a pan that stays inside the drawn canvas nothing needs drawing; otherwise
    // the redraw runs as a task of its own, so the basemap's and the sensors' redraws
    // after one move are two short tasks, not one long one.
    _moved() {
      const map = this._map;
      if (this._extent && map.getZoom() === this._zoom) {
        const view = map.getPixelBounds();
        const { min, max } = this._extent;
        if (view.min.x >= min.x && view.min.y >= min.y && view.max.x <= max.x && view.max.y <= max.y) {
          this.fire("drawn", this.drawn);
          return;
        }
      }
      this._later();
    },

    _later() {
      clearTimeout(this._pending);
      this._pending = setTimeout(() => this.redraw(), 0);
    },

    redraw() {
      clearTimeout(this._pending);
      const map = this._map;
      if (!map || !this._canvas) return;
      const size = map.getSize();
      const pad = size.multiplyBy(this.options.padding).round();
      const topLeft = map.containerPointToLayerPoint(pad.multiplyBy(-1)).round();
      const w = size.x + 2 * pad.x, h = size.y + 2 * pad.y;
      const dpr = root.devicePixelRatio || 1;
      const c = this._canvas;
      if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
        c.width = Math.round(w * dpr);
        c.height = Math.round(h * dpr);
        c.style.width = `${w}px`;
        c.style.height = `${h}px`;
      }
      L.DomUtil.setPosition(c, topLeft);
      this._zoom = map.getZoom();
      this._nw = map.layerPointToLatLng(topLeft);
      const ctx = c.getContext("2d");
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, w, h);
      // The canvas's (0, 0) in world pixels at this zoom.
      const origin = map.getPixelOrigin().add(topLeft);
      this._extent = L.bounds(origin, origin.add([w, h]));
      this.draw(ctx, { x0: origin.x, y0: origin.y, scale: 2 ** this._zoom, zoom: this._zoom, width: w, height: h });
    },

    // As L.ImageOverlay does: keep the canvas's north-west corner in place and scale.
    _animateZoom(e) {
      const scale = this._map.getZoomScale(e.zoom, this._zoom);
      const offset = this._map._latLngToNewLayerPoint(this._nw, e.zoom, e.center);
      L.DomUtil.setTransform(this._canvas, offset, scale);
    },

    draw() {},
  });

  // Rings or lines as flat Float64Arrays [x0, y0, x1, y1, ...] with their bounding box.
  function projectLines(lines) {
    return lines.map((line) => {
      const xy = new Float64Array(line.length * 2);
      let minX = Infinity, minY = Infinity, maxX = -Infinity, maxY = -Infinity;
      let shift = 0, previous = null;
      line.forEach(([lon, lat], k) => {
        // Unwrap at the antimeridian (Chukotka, Fiji, Antarctica): a ring stays one
        // continuous shape past ±180° instead of a stripe across the whole world.
        if (previous !== null && Math.abs(lon + shift - previous) > 180) shift -= Math.sign(lon + shift - previous) * 360;
        previous = lon + shift;
        const [x, y] = S.mercator(lat, lon + shift);
        xy[2 * k] = x; xy[2 * k + 1] = y;
        if (x < minX) minX = x; if (x > maxX) maxX = x;
        if (y < minY) minY = y; if (y > maxY) maxY = y;
      });
      return { xy, minX, minY, maxX, maxY };
    });
  }

  // Appends the visible lines to the current path, dropping points within a pixel of
  // the last one drawn (at low zoom most of a coastline is sub-pixel).
  function tracePath(ctx, lines, v, close) {
    const { x0, y0, scale, width, height } = v;
    for (const ln of lines) {
      if (ln.maxX * scale < x0 || ln.minX * scale > x0 + width || ln.maxY * scale < y0 || ln.minY * scale > y0 + height) continue;
      const xy = ln.xy;
      let px = xy[0] * scale - x0, py = xy[1] * scale - y0;
      ctx.moveTo(px, py);
      for (let k = 2; k < xy.length; k += 2) {
        const x = xy[k] * scale - x0, y = xy[k + 1] * scale - y0;
        if (Math.abs(x - px) < 1 && Math.abs(y - py) < 1) continue;
        ctx.lineTo(x, y);
        px = x; py = y;
      }
      if (close) ctx.closePath();
    }
  }

  // Land, coasts and country borders from a world-atlas TopoJSON (Natural Earth).
  const Basemap = CanvasLayer.extend({
    options: { pane: "basemap", padding: 0.5, className: "aircast-basemap" },

    initialize(topology, options) {
      L.setOptions(this, options);
      const land = topojson.feature(topology, topology.objects.land);
      const rings = [];
      for (const f of land.features || [land]) {
        const g = f.geometry;
        const polys = g.type === "Polygon" ? [g.coordinates] : g.coordinates;
        for (const p of polys) for (const ring of p) rings.push(ring);
      }
      const borders = topojson.mesh(topology, topology.objects.countries, (a, b) => a !== b);
      this._land = projectLines(rings);
      this._borders = projectLines(borders.coordinates);
    },

    draw(ctx, v) {
      ctx.beginPath();
      tracePath(ctx, this._land, v, true);
      ctx.fillStyle = "#f3f1ea";
      ctx.fill("evenodd");
      ctx.lineWidth = 0.8;
      ctx.strokeStyle = "#8fa9bb";
      ctx.stroke();
      ctx.beginPath();
      tracePath(ctx, this._borders, v, false);
      ctx.setLineDash([4, 3]);
      ctx.lineWidth = 0.9;
      ctx.strokeStyle = "#a39a8e";
      ctx.stroke();
      ctx.setLineDash([]);
    },
  });

  // The sensors of one layer (a /v1/map response). Below `pointsZoom` each hexagon of
  // `hexRadius` px holds the sensors inside it, coloured by their median; from
  // `pointsZoom` on, one dot per sensor. The hexagon grid is anchored at the world's
  // pixel origin, so a pan does not move the bins.
  const Network = CanvasLayer.extend({
    options: { pane: "sensors", padding: 0.5, className: "aircast-network", pointsZoom: 9, hexRadius: 14 },

    initialize(options) {
      L.setOptions(this, options);
      this.layer = null;
      this.selected = -1;
      this.bins = [];
      this.drawn = { sensors: 0, bins: 0, mode: "none" };
      this._sprites = new Map();
      this._hexbin = d3.hexbin().radius(this.options.hexRadius).x((p) => p[0]).y((p) => p[1]);
    },

    setLayer(layer, scale) {
      this.layer = layer;
      this.scale = scale;
      this.mx = new Float64Array(layer.count);
      this.my = new Float64Array(layer.count);
      for (let i = 0; i < layer.count; i++) {
        const [x, y] = S.mercator(layer.lat[i], layer.lon[i]);
        this.mx[i] = x; this.my[i] = y;
      }
      this.setScale(scale);
    },

    setScale(scale) {
      this.scale = scale;
      this.bucketOf = S.buckets(this.layer, scale);
      // Drawing order: stale and empty first, then ascending class, so the worst air
      // is on top where dots overlap.
      this.order = Uint32Array.from({ length: this.layer.count }, (_, i) => i)
        .sort((a, b) => this.bucketOf[a] - this.bucketOf[b]);
      this.redraw();
    },

    mode() {
      return this._map && this._map.getZoom() >= this.options.pointsZoom ? "points" : "hexbin";
    },

    radius(zoom) {
      return Math.min(8, 3 + (zoom - this.options.pointsZoom));
    },

    draw(ctx, v) {
      this.view = v;
      if (!this.layer) { this.drawn = { sensors: 0, bins: 0, mode: "none" }; return; }
      if (this.mode() === "points") this._drawPoints(ctx, v); else this._drawBins(ctx, v);
      this.fire("drawn", this.drawn);
    },

    _visible(v, margin) {
      const { x0, y0, scale, width, height } = v;
      const out = [];
      for (const i of this.order) {
        const x = this.mx[i] * scale - x0, y = this.my[i] * scale - y0;
        if (x >= -margin && y >= -margin && x <= width + margin && y <= height + margin) out.push(i);
      }
      return out;
    },

    // Every dot and hexagon is a blit of a pre-drawn sprite (one per colour and size):
    // thousands of drawImage calls cost a few ms, where one path of thousands of
    // closed sub-paths costs Chromium hundreds.
    _sprite(shape, bucket, r) {
      const dpr = root.devicePixelRatio || 1;
      const key = `${shape}:${bucket}:${r}:${dpr}:${S.colourOf(bucket, this.scale)}`;
      let sprite = this._sprites.get(key);
      if (sprite) return sprite;
      const size = 2 * r + 2;
      const canvas = document.createElement("canvas");
      canvas.width = canvas.height = Math.ceil(size * dpr);
      const c = canvas.getContext("2d");
      c.scale(dpr, dpr);
      c.beginPath();
      if (shape === "hex") {
        for (let k = 0; k < 6; k++) {
          const a = k * Math.PI / 3;
          c.lineTo(r + 1 + Math.sin(a) * (r - 0.75), r + 1 - Math.cos(a) * (r - 0.75));
        }
        c.closePath();
        c.globalAlpha = bucket < 0 ? 0.55 : 0.75;
        c.fillStyle = S.colourOf(bucket, this.scale);
        c.fill();
        c.globalAlpha = 1;
        c.lineWidth = 0.6;
        c.strokeStyle = "rgba(255, 255, 255, 0.9)";
      } else {
        c.arc(r + 1, r + 1, r, 0, 2 * Math.PI);
        c.globalAlpha = bucket === -1 ? 0.65 : 0.95;
        c.fillStyle = S.colourOf(bucket, this.scale);
        c.fill();
        c.globalAlpha = 1;
        c.lineWidth = 1;
        c.strokeStyle = "rgba(40, 40, 40, 0.75)";
      }
      c.stroke();
      sprite = { canvas, size, r };
      this._sprites.set(key, sprite);
      return sprite;
    },

    _blit(ctx, sprite, x, y) {
      // Whole device pixels: no resampling blur.
      const dpr = root.devicePixelRatio || 1;
      const left = Math.round((x - sprite.r - 1) * dpr) / dpr, top = Math.round((y - sprite.r - 1) * dpr) / dpr;
      ctx.drawImage(sprite.canvas, left, top, sprite.size, sprite.size);
    },

    _drawPoints(ctx, v) {
      const r = this.radius(v.zoom);
      const visible = this._visible(v, r);  // in drawing order: worst air last, on top
      for (const i of visible) {
        this._blit(ctx, this._sprite("dot", this.bucketOf[i], r), this.mx[i] * v.scale - v.x0, this.my[i] * v.scale - v.y0);
      }
      this._drawSelected(ctx, v, r + 4);
      this.points = visible;
      this.bins = [];
      this.drawn = { sensors: visible.length, bins: 0, mode: "points" };
    },

    _drawBins(ctx, v) {
      const hr = this.options.hexRadius;
      const pts = this._visible(v, 2 * hr).map((i) => [this.mx[i] * v.scale, this.my[i] * v.scale, i]);
      const bins = this._hexbin(pts);
      let sensors = 0;
      for (const bin of bins) {
        bin.indices = bin.map((p) => p[2]);
        bin.summary = S.binSummary(bin.indices, this.bucketOf, this.scale);
        sensors += bin.length;
        this._blit(ctx, this._sprite("hex", bin.summary.bucket, hr), bin.x - v.x0, bin.y - v.y0);
      }
      this._drawSelected(ctx, v, 7);
      this.bins = bins;
      this.points = [];
      this.drawn = { sensors, bins: bins.length, mode: "hexbin" };
    },

    _drawSelected(ctx, v, r) {
      const i = this.selected;
      if (i < 0 || !this.layer || i >= this.layer.count) return;
      const x = this.mx[i] * v.scale - v.x0, y = this.my[i] * v.scale - v.y0;
      ctx.beginPath();
      ctx.arc(x, y, r, 0, 2 * Math.PI);
      ctx.lineWidth = 3;
      ctx.strokeStyle = "#1f3b4d";
      ctx.stroke();
    },

    // What is under a container point: {kind: "sensor", index} or {kind: "bin", bin}.
    hit(containerPoint) {
      if (!this.view || !this.layer) return null;
      const lp = this._map.containerPointToLayerPoint(containerPoint);
      const wx = lp.x + this._map.getPixelOrigin().x, wy = lp.y + this._map.getPixelOrigin().y;
      const scale = this.view.scale;
      if (this.mode() === "points") {
        const r = this.radius(this.view.zoom) + 3;
        let best = -1, bestD = r * r;
        for (const i of this.points || []) {
          const dx = this.mx[i] * scale - wx, dy = this.my[i] * scale - wy;
          const d = dx * dx + dy * dy;
          if (d <= bestD) { best = i; bestD = d; }
        }
        return best < 0 ? null : { kind: "sensor", index: best };
      }
      const hr = this.options.hexRadius;
      for (const bin of this.bins) {
        const dx = bin.x - wx, dy = bin.y - wy;
        if (dx * dx + dy * dy <= hr * hr * 0.8) return { kind: "bin", bin };
      }
      return null;
    },
  });

  root.aircastLayers = { CanvasLayer, Basemap, Network, projectLines };
})(window);
