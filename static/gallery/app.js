/* Search by image: page behaviour. Plain JavaScript, no build step.
 *
 * Every request goes through the JSON API (see gallery/api.py); errors come back as
 * {"error": "..."} and are shown as they are. Pages say which part to start through
 * <body data-page="...">, and the API root through <body data-api-root="...">. */
(() => {
  "use strict";

  const FORMAT_NAMES = "JPEG, PNG, WebP, GIF, BMP or TIFF";
  const ACCEPTED_TYPES = new Set([
    "image/jpeg",
    "image/pjpeg",
    "image/png",
    "image/webp",
    "image/gif",
    "image/bmp",
    "image/x-ms-bmp",
    "image/tiff",
  ]);
  const ACCEPTED_EXTENSIONS = /\.(jpe?g|png|webp|gif|bmp|tiff?)$/i;
  const POLL_MS = 1000;

  const $ = (selector, root = document) => root.querySelector(selector);

  /** Build an element: el("a", {href: "/", class: "x"}, "text", otherNode). Text is never parsed as HTML. */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "dataset") Object.assign(node.dataset, value);
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : value);
    }
    node.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
    return node;
  }

  const apiRoot = () => document.body.dataset.apiRoot || "/api/";

  function humanSize(bytes) {
    if (bytes >= 1024 * 1024) return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
    return `${Math.max(1, Math.round(bytes / 1024))} KB`;
  }

  /** A message for a person if the file obviously cannot be used, else null. The server checks again. */
  function checkFile(file, maxMb) {
    const named = file.name ? `“${file.name}”` : "The file";
    const type = (file.type || "").toLowerCase();
    const looksLikeImage = type ? ACCEPTED_TYPES.has(type) : ACCEPTED_EXTENSIONS.test(file.name || "");
    if (!looksLikeImage) {
      const what = type ? ` (${type})` : "";
      return `${named} is not a supported image${what}; please choose a ${FORMAT_NAMES} image.`;
    }
    if (file.size === 0) return `${named} is empty.`;
    if (maxMb > 0 && file.size > maxMb * 1024 * 1024) {
      return `${named} is too large (${humanSize(file.size)}); the limit is ${maxMb} MB.`;
    }
    return null;
  }

  async function errorFrom(response) {
    try {
      const body = await response.json();
      if (body && typeof body.error === "string" && body.error) return body.error;
    } catch {
      /* not JSON: fall through */
    }
    if (response.status === 413) return "The file is too large for the server.";
    return `The server could not handle the request (${response.status}). Please try again.`;
  }

  /** Django's CSRF token (cookie), sent with every request: a signed-in member of staff's
   * upload counts as theirs only with it. */
  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  /** fetch + JSON; throws Error(message for a person) on network or API errors, AbortError when aborted. */
  async function requestJSON(url, options = {}) {
    let response;
    try {
      response = await fetch(url, {
        headers: { Accept: "application/json", "X-CSRFToken": csrfToken() },
        credentials: "same-origin",
        ...options,
      });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new Error("Could not reach the server. Check your connection and try again.");
    }
    if (!response.ok) {
      const error = new Error(await errorFrom(response));
      error.status = response.status;
      throw error;
    }
    return { status: response.status, body: await response.json() };
  }

  function showAlert(box, message) {
    box.textContent = message;
    box.hidden = !message;
  }

  function filesFromClipboard(event) {
    const data = event.clipboardData;
    if (!data) return [];
    const files = Array.from(data.files || []);
    if (files.length) return files;
    return Array.from(data.items || [])
      .filter((item) => item.kind === "file")
      .map((item) => item.getAsFile())
      .filter(Boolean);
  }

  /** Drop zone: click / Enter / Space opens the picker, drops anywhere on the page and pastes deliver files. */
  function setupDropzone(zone, input, onFiles) {
    zone.addEventListener("click", () => input.click());
    // Like a native button: Enter activates on keydown, Space on keyup (and must not scroll).
    zone.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.repeat) {
        event.preventDefault();
        input.click();
      } else if (event.key === " ") {
        event.preventDefault();
      }
    });
    zone.addEventListener("keyup", (event) => {
      if (event.key === " ") {
        event.preventDefault();
        input.click();
      }
    });
    input.addEventListener("change", () => {
      const files = Array.from(input.files || []);
      if (files.length) onFiles(files);
      input.value = ""; // choosing the same file again still counts
    });

    let depth = 0;
    const hasFiles = (event) => Array.from(event.dataTransfer?.types || []).includes("Files");
    window.addEventListener("dragenter", (event) => {
      if (!hasFiles(event)) return;
      depth += 1;
      zone.classList.add("is-dragover");
    });
    window.addEventListener("dragleave", () => {
      depth = Math.max(0, depth - 1);
      if (depth === 0) zone.classList.remove("is-dragover");
    });
    window.addEventListener("dragover", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault(); // allow dropping anywhere instead of the browser opening the file
      event.dataTransfer.dropEffect = "copy";
    });
    window.addEventListener("drop", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      depth = 0;
      zone.classList.remove("is-dragover");
      const files = Array.from(event.dataTransfer.files || []);
      if (files.length) onFiles(files);
    });

    document.addEventListener("paste", (event) => {
      const files = filesFromClipboard(event);
      if (!files.length) return; // plain text pastes into fields as usual
      event.preventDefault();
      onFiles(files);
    });
  }

  const percent = (score) => `${Math.max(0, Math.min(100, Math.round(score * 100)))}%`;

  // --- Match tiers ----------------------------------------------------------------------

  const COPY_MATCHES = new Set(["exact", "near_duplicate"]);

  /** The badge of a result: "Same photo", "Copy", "Edited copy", or null for a look-alike. */
  function tierLabel(match, explanation) {
    if (match === "exact") return "Same photo";
    if (match === "near_duplicate") return /re-compressed|resized/.test(explanation || "") ? "Copy" : "Edited copy";
    return null;
  }

  const sentence = (text) => (text ? text.charAt(0).toUpperCase() + text.slice(1) : "");

  // --- Crop box over the query photo ----------------------------------------------------

  const DRAG_START_PX = 4; // a press that moves less than this is a click (suggested regions)
  const MIN_BOX_PX = 24; // smallest box, in displayed pixels
  const WHOLE_SHARE = 0.985; // a box this close to the whole photo is the whole photo

  const clamp = (value, low, high) => Math.max(low, Math.min(high, value));
  const boxText = (b) => (b ? [b.x, b.y, b.w, b.h].join(",") : "");

  /**
   * The query photo with suggested regions, the best match's outline and a crop box that
   * the visitor drags, resizes (corner handles) or moves with the keyboard. Boxes are kept
   * in pixels of the picture as decoded (naturalWidth/Height: what the server sees after
   * exif_transpose, since browsers show photos upright by default) and drawn in percent,
   * so they follow any displayed size. `onSearch(box | null)` runs when a box is chosen.
   */
  function createCropper({ area, stage, img, cropBox, hole, regionsLayer, hitBox, missing, onSearch, onChange }) {
    let box = null; // {x, y, w, h} in natural pixels; null: the whole photo
    let regions = [];
    let highlight = null;
    let drag = null;
    let justDragged = false;

    const size = () => ({ w: img.naturalWidth, h: img.naturalHeight });
    const ready = () => img.complete && img.naturalWidth > 0 && !stage.hidden;
    const whole = () => ({ x: 0, y: 0, w: size().w, h: size().h });
    /** A box from the server, clipped to the picture (null when nothing of it is left). */
    function fit(list) {
      if (!Array.isArray(list) || list.length !== 4) return null;
      const { w: W, h: H } = size();
      const [x, y, w, h] = list.map(Number);
      const left = clamp(Math.round(x), 0, W);
      const top = clamp(Math.round(y), 0, H);
      const right = clamp(Math.round(x + w), 0, W);
      const bottom = clamp(Math.round(y + h), 0, H);
      return right - left >= 1 && bottom - top >= 1 ? { x: left, y: top, w: right - left, h: bottom - top } : null;
    }
    const isWhole = (b) => b.w >= size().w * WHOLE_SHARE && b.h >= size().h * WHOLE_SHARE;

    function place(node, b) {
      const { w: W, h: H } = size();
      node.style.left = `${(100 * b.x) / W}%`;
      node.style.top = `${(100 * b.y) / H}%`;
      node.style.width = `${(100 * b.w) / W}%`;
      node.style.height = `${(100 * b.h) / H}%`;
    }

    /** Fit the photo into the area (up- or down-scaled, never distorted). */
    function layout() {
      const { w: W, h: H } = size();
      if (!W || !H) return;
      const scale = Math.min(area.clientWidth / W, area.clientHeight / H);
      stage.style.width = `${Math.max(1, Math.floor(W * scale))}px`;
      stage.style.height = `${Math.max(1, Math.floor(H * scale))}px`;
    }

    function drawCrop(shown) {
      const b = shown || box || whole();
      place(cropBox, b);
      place(hole, b);
      stage.classList.toggle("has-crop", Boolean(shown || box));
    }

    function drawRegions() {
      const items = regions
        .map((region, n) => ({ ...region, n, fitted: fit(region.box) }))
        .filter((region) => region.fitted)
        .sort((a, b) => b.fitted.w * b.fitted.h - a.fitted.w * a.fitted.h); // small ones on top
      regionsLayer.replaceChildren(
        ...items.map((region) => {
          const b = region.fitted;
          const button = el(
            "button",
            {
              type: "button",
              class: "region",
              dataset: { box: boxText(b) },
              "aria-label": `Search this region (${b.w} × ${b.h} pixels at ${b.x}, ${b.y})`,
              "aria-pressed": boxText(b) === boxText(box) ? "true" : "false",
              title: `Search this part (best match ${percent(region.score)})`,
            },
            el("span", { class: "region-dot", "aria-hidden": "true" }),
          );
          place(button, b);
          return button;
        }),
      );
    }

    function drawHighlight() {
      const b = highlight && fit(highlight);
      hitBox.hidden = !b || !ready();
      if (b) place(hitBox, b);
    }

    function redraw() {
      const shown = ready();
      cropBox.hidden = !shown;
      regionsLayer.hidden = !shown;
      if (!shown) {
        hitBox.hidden = true;
        return;
      }
      layout();
      drawCrop();
      drawRegions();
      drawHighlight();
    }

    function announce() {
      cropBox.dataset.box = boxText(box);
      onChange(box);
    }

    function setBox(next, { search = false } = {}) {
      box = next && !isWhole(next) ? next : null;
      drawCrop();
      drawRegions();
      announce();
      if (search) onSearch(box);
    }

    // Pointer: a handle resizes; a press inside the box moves it; elsewhere it draws a new one.
    function pointAt(event) {
      const rect = stage.getBoundingClientRect();
      const { w: W, h: H } = size();
      return {
        x: clamp(((event.clientX - rect.left) * W) / rect.width, 0, W),
        y: clamp(((event.clientY - rect.top) * H) / rect.height, 0, H),
        scale: W / rect.width, // picture pixels per displayed pixel
      };
    }

    function fromCorners(ax, ay, bx, by) {
      const x = Math.round(Math.min(ax, bx));
      const y = Math.round(Math.min(ay, by));
      return { x, y, w: Math.round(Math.max(ax, bx)) - x, h: Math.round(Math.max(ay, by)) - y };
    }

    function dragged(p) {
      const { w: W, h: H } = size();
      const s = drag.start;
      if (drag.mode === "move") {
        const x = clamp(Math.round(s.x + p.x - drag.origin.x), 0, W - s.w);
        const y = clamp(Math.round(s.y + p.y - drag.origin.y), 0, H - s.h);
        return { x, y, w: s.w, h: s.h };
      }
      if (drag.mode === "resize") {
        const fixedX = drag.corner.includes("w") ? s.x + s.w : s.x;
        const fixedY = drag.corner.includes("n") ? s.y + s.h : s.y;
        return fromCorners(fixedX, fixedY, p.x, p.y);
      }
      return fromCorners(drag.origin.x, drag.origin.y, p.x, p.y);
    }

    function beginDrag(event) {
      drag.active = true;
      stage.setPointerCapture(event.pointerId);
      stage.classList.add("is-dragging");
    }

    stage.addEventListener("pointerdown", (event) => {
      // (a press released outside before it became a drag left `drag` pending: replace it)
      if (!ready() || drag?.active || (event.pointerType === "mouse" && event.button !== 0)) return;
      const p = pointAt(event);
      const corner = event.target.closest(".crop-handle")?.dataset.corner || "";
      const inside = box && p.x >= box.x && p.x <= box.x + box.w && p.y >= box.y && p.y <= box.y + box.h;
      drag = {
        pointerId: event.pointerId,
        mode: corner ? "resize" : inside ? "move" : "draw",
        corner,
        origin: p,
        client: { x: event.clientX, y: event.clientY },
        start: box || whole(),
        current: null,
        active: false,
      };
      if (corner) {
        event.preventDefault();
        beginDrag(event);
      }
    });

    stage.addEventListener("pointermove", (event) => {
      if (!drag || event.pointerId !== drag.pointerId) return;
      if (!drag.active) {
        const moved = Math.hypot(event.clientX - drag.client.x, event.clientY - drag.client.y);
        if (moved < DRAG_START_PX) return;
        beginDrag(event);
      }
      event.preventDefault();
      drag.current = dragged(pointAt(event));
      drawCrop(drag.current);
    });

    function endDrag(event, cancelled) {
      if (!drag || event.pointerId !== drag.pointerId) return;
      const { active, current } = drag;
      const minimum = MIN_BOX_PX * pointAt(event).scale;
      drag = null;
      stage.classList.remove("is-dragging");
      if (!active) return; // a click: suggested regions handle it
      justDragged = true;
      setTimeout(() => {
        justDragged = false;
      }, 0);
      if (cancelled || !current || current.w < minimum || current.h < minimum) {
        drawCrop(); // back to where it was
        return;
      }
      setBox(current, { search: true });
    }

    stage.addEventListener("pointerup", (event) => endDrag(event, false));
    stage.addEventListener("pointercancel", (event) => endDrag(event, true));
    stage.addEventListener("lostpointercapture", (event) => {
      // Touch presses start captured by the touched child; taking the capture over fires this on it.
      if (event.target === stage) endDrag(event, false);
    });
    stage.addEventListener(
      "click",
      (event) => {
        if (justDragged) event.stopPropagation(); // the end of a drag is not a click on a region
      },
      true,
    );
    regionsLayer.addEventListener("click", (event) => {
      const button = event.target.closest(".region");
      if (!button) return;
      const [x, y, w, h] = button.dataset.box.split(",").map(Number);
      setBox({ x, y, w, h }, { search: true });
    });

    // Keyboard: arrows move the box, Shift+arrows resize it, Enter searches, Escape: whole photo.
    const KEY_STEPS = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    cropBox.addEventListener("keydown", (event) => {
      if (!ready()) return;
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        if (!event.repeat) setBox(box, { search: true });
        return;
      }
      if (event.key === "Escape" && box) {
        event.preventDefault();
        setBox(null, { search: true });
        return;
      }
      const step = KEY_STEPS[event.key];
      if (!step) return;
      event.preventDefault();
      const { w: W, h: H } = size();
      const b = box || whole();
      const dx = step[0] * Math.max(1, Math.round(W / 40));
      const dy = step[1] * Math.max(1, Math.round(H / 40));
      const minimum = Math.max(8, Math.round(MIN_BOX_PX * pointAt(event).scale));
      const next = event.shiftKey
        ? { x: b.x, y: b.y, w: clamp(b.w + dx, minimum, W - b.x), h: clamp(b.h + dy, minimum, H - b.y) }
        : { x: clamp(b.x + dx, 0, W - b.w), y: clamp(b.y + dy, 0, H - b.h), w: b.w, h: b.h };
      box = next; // kept even when whole-sized, until Enter searches it
      drawCrop();
      announce();
    });

    img.addEventListener("load", () => {
      stage.hidden = false;
      missing.hidden = true;
      area.style.setProperty("--photo-ratio", String(img.naturalWidth / img.naturalHeight));
      redraw();
    });
    img.addEventListener("error", () => {
      if (!img.getAttribute("src")) return;
      stage.hidden = true; // the browser cannot show it (TIFF, an address that refuses us): search anyway
      missing.hidden = false;
      redraw();
    });
    new ResizeObserver(() => redraw()).observe(area);

    return {
      /** A new picture: no box, no regions. */
      reset(src) {
        box = null;
        regions = [];
        highlight = null;
        stage.hidden = false;
        missing.hidden = true;
        stage.style.width = "0px";
        stage.style.height = "0px";
        img.src = src;
        redraw(); // shown at once when the browser already has it decoded
        announce();
      },
      /** The chosen box in picture pixels, or null for the whole photo. */
      get box() {
        return box && !isWhole(box) ? box : null;
      },
      clear() {
        setBox(null);
      },
      setRegions(list) {
        regions = Array.isArray(list) ? list : [];
        if (ready()) drawRegions();
      },
      setHighlight(list) {
        highlight = list || null;
        drawHighlight();
      },
      setBusy(on) {
        stage.classList.toggle("is-searching", on);
        stage.setAttribute("aria-busy", on ? "true" : "false");
      },
    };
  }

  // --- Home: search by image ------------------------------------------------------------

  function initHome() {
    const panel = $("#search");
    if (!panel) return;
    const maxMb = Number(panel.dataset.maxUploadMb) || 0;
    const searchUrl = panel.dataset.searchUrl || `${apiRoot()}search`;
    const input = $("#file-input");
    const zone = $("#dropzone");
    const category = $("#category-filter");
    const errorBox = $("#search-error");
    const query = $("#query");
    const preview = $("#query-preview");
    const queryName = $("#query-name");
    const cropStatus = $("#crop-status");
    const cropClear = $("#crop-clear");
    const camera = $("#camera-input");
    const urlForm = $("#url-form");
    const urlInput = $("#url-input");
    const section = $("#results-section");
    const heading = $("#results-heading");
    const list = $("#results");
    const meta = $("#search-meta");
    const loading = $("#search-loading");
    const noResults = $("#no-results");

    let current = null; // the query: {file} or {url}
    let previewUrl = null;
    let controller = null;

    const cropper = createCropper({
      area: $("#crop-area"),
      stage: $("#crop-stage"),
      img: preview,
      cropBox: $("#crop-box"),
      hole: $(".crop-hole"),
      regionsLayer: $("#query-regions"),
      hitBox: $("#hit-box"),
      missing: $("#preview-missing"),
      onSearch: (box) => runSearch({ ...current, box }),
      onChange: (box) => {
        cropStatus.textContent = box ? `Selected area: ${box.w} × ${box.h} px` : "Whole photo";
        cropClear.disabled = !box;
      },
    });

    function setLoading(on) {
      loading.hidden = !on;
      meta.hidden = on;
      list.setAttribute("aria-busy", on ? "true" : "false");
      panel.classList.toggle("is-loading", on);
      section.classList.toggle("is-loading", on);
      cropper.setBusy(on);
      if (on) section.hidden = false;
    }

    function showQuery(src, name, label) {
      cropper.reset(src);
      preview.alt = `Your query image: ${label || name}`;
      queryName.textContent = label || name;
      query.hidden = false;
      panel.classList.add("has-query");
    }

    function renderResult(result) {
      const title = result.title || `Image ${result.id}`;
      const badge = tierLabel(result.match, result.explanation);
      const searchButton = el(
        "button",
        {
          type: "button",
          class: "btn btn-small search-this",
          "aria-label": `Search with “${title}”`,
          onclick: () => searchWithImageOf(result.image_url, title),
        },
        "Search with this image",
      );
      const similarity = `Cosine similarity ${Number(result.score).toFixed(3)}`;
      return el(
        "li",
        {
          class: `card result${badge ? " is-copy" : ""}`,
          dataset: { id: String(result.id), score: String(result.score), match: result.match || "similar" },
        },
        el(
          "a",
          { class: "thumb", href: result.url },
          el("img", { src: result.thumbnail_url, alt: title, loading: "lazy" }),
        ),
        badge ? el("span", { class: `badge badge-${result.match}` }, badge) : null,
        el(
          "span",
          { class: "score", title: badge ? similarity : `${similarity} · ${result.explanation || "look-alike"}` },
          percent(result.score),
        ),
        el(
          "div",
          { class: "card-body" },
          el("a", { class: "card-title", href: result.url }, title),
          badge && result.explanation ? el("p", { class: "explanation" }, sentence(result.explanation)) : null,
          result.category ? el("span", { class: "tag" }, result.category) : null,
          searchButton,
        ),
      );
    }

    function render(body, box) {
      const results = body.results || [];
      list.replaceChildren(...results.map(renderResult));
      const n = results.length;
      heading.textContent = n && COPY_MATCHES.has(results[0].match) ? "Matches" : "Similar images";
      meta.textContent = `${n} result${n === 1 ? "" : "s"} · took ${Math.round(body.took_ms)} ms`;
      const where = box ? " in the selected area" : "";
      noResults.textContent = category.value
        ? `No similar images${where} in “${category.value}”. Try “All categories”.`
        : `No similar images found${where}. Is anything indexed yet?`;
      noResults.hidden = n > 0;
      section.hidden = false;
      if (!box) cropper.setRegions(body.regions || []); // the whole photo's suggestions stay while cropping
      cropper.setHighlight(n ? results[0].box : null);
    }

    /** The one search: a file or an address, optionally only a box of it (picture pixels). */
    async function runSearch({ file = null, url = null, box = null } = {}) {
      if (!file && !url) return;
      if (controller) controller.abort();
      const mine = new AbortController();
      controller = mine;
      const form = new FormData();
      if (file) form.append("image", file, file.name || "query.png");
      else form.append("url", url);
      if (box) form.append("box", boxText(box));
      if (category.value) form.append("category", category.value);
      showAlert(errorBox, "");
      setLoading(true);
      try {
        const { body } = await requestJSON(searchUrl, { method: "POST", body: form, signal: mine.signal });
        if (controller === mine) render(body, box);
      } catch (err) {
        if (err.name === "AbortError" || controller !== mine) return;
        list.replaceChildren();
        noResults.hidden = true;
        section.hidden = true;
        cropper.setHighlight(null);
        showAlert(errorBox, err.message);
      } finally {
        if (controller === mine) {
          controller = null;
          setLoading(false);
        }
      }
    }

    function searchWithFile(file, label) {
      const problem = checkFile(file, maxMb);
      if (problem) {
        showAlert(errorBox, problem);
        return;
      }
      if (previewUrl) URL.revokeObjectURL(previewUrl);
      previewUrl = URL.createObjectURL(file);
      current = { file };
      showQuery(previewUrl, file.name || "Pasted image", label);
      runSearch(current);
    }

    function searchWithAddress(text) {
      const address = text.trim();
      let parsed = null;
      try {
        parsed = new URL(address);
      } catch {
        /* not an address */
      }
      if (!parsed || !/^https?:$/.test(parsed.protocol)) {
        showAlert(errorBox, "Please enter an image address that starts with http:// or https://.");
        urlInput.focus();
        return;
      }
      const name = decodeURIComponent(parsed.pathname.split("/").pop() || "") || parsed.hostname;
      current = { url: parsed.href };
      showQuery(parsed.href, name, `${name} (${parsed.hostname})`);
      runSearch(current);
    }

    /** "Search with this image" on a result: its picture, fetched from this server, as a file. */
    async function searchWithImageOf(url, label) {
      showAlert(errorBox, "");
      setLoading(true);
      try {
        let response;
        try {
          response = await fetch(url);
        } catch {
          throw new Error("Could not reach the server to load that image.");
        }
        if (!response.ok) throw new Error(`Could not load that image (${response.status}).`);
        const blob = await response.blob();
        const name = decodeURIComponent(new URL(url, location.href).pathname.split("/").pop() || "image");
        setLoading(false);
        searchWithFile(new File([blob], name, { type: blob.type }), label);
        window.scrollTo({ top: 0, behavior: "smooth" });
      } catch (err) {
        setLoading(false);
        showAlert(errorBox, err.message);
      }
    }

    setupDropzone(zone, input, (files) => searchWithFile(files[0]));
    $("#camera-button").addEventListener("click", () => camera.click());
    camera.addEventListener("change", () => {
      const file = camera.files?.[0];
      if (file) searchWithFile(file);
      camera.value = "";
    });
    urlForm.addEventListener("submit", (event) => {
      event.preventDefault();
      searchWithAddress(urlInput.value);
    });
    cropClear.addEventListener("click", () => {
      cropper.clear();
      runSearch({ ...current, box: null });
    });
    category.addEventListener("change", () => runSearch({ ...current, box: cropper.box }));

    // /?item=<id>: "search with this image" from an item page.
    const itemId = new URLSearchParams(location.search).get("item");
    if (itemId && /^\d+$/.test(itemId)) {
      requestJSON(`${apiRoot()}images/${itemId}`)
        .then(({ body }) => searchWithImageOf(body.image_url, body.title))
        .catch((err) => showAlert(errorBox, err.message));
    }
  }

  // --- Upload: send files, then follow their status -------------------------------------

  const STATUS_NOTES = {
    uploading: "Uploading…",
    processing: "Analysing the image…",
    indexed: "Indexed: it shows up in searches now.",
    failed: "Could not be processed.",
    hidden: "Hidden from search by staff.",
    rejected: "Not uploaded.",
  };
  const MODERATION_NOTE = "A moderator will review it before it shows up in searches.";

  function initUpload() {
    const form = $("#upload-form");
    if (!form) return;
    const maxMb = Number(form.dataset.maxUploadMb) || 0;
    const input = $("#file-input");
    const zone = $("#dropzone");
    const selection = $("#selection");
    const title = $("#upload-title");
    const category = $("#upload-category");
    const errorBox = $("#upload-error");
    const submit = $("#upload-submit");
    const statusLine = $("#upload-status");
    const list = $("#uploads");
    const categoryOptions = $("#category-options");

    const homeUrl = form.dataset.homeUrl || "/";
    const itemUrl = (id) => (form.dataset.itemUrl || "/items/0/").replace(/\/0\/$/, `/${id}/`);
    let chosen = [];
    let busy = false;

    function renderSelection() {
      if (!chosen.length) {
        selection.replaceChildren(el("span", { class: "muted" }, "No file chosen."));
        return;
      }
      selection.replaceChildren(
        el(
          "ul",
          { class: "chosen" },
          ...chosen.map((file) =>
            el(
              "li",
              {},
              el("span", { class: "chosen-name" }, file.name || "Pasted image"),
              el("span", { class: "muted" }, ` ${humanSize(file.size)}`),
            ),
          ),
        ),
      );
    }

    function choose(files) {
      const problems = [];
      chosen = [];
      for (const file of files) {
        const problem = checkFile(file, maxMb);
        if (problem) problems.push(problem);
        else chosen.push(file);
      }
      showAlert(errorBox, problems.join(" "));
      renderSelection();
    }

    function announce(message) {
      statusLine.textContent = message;
      statusLine.classList.remove("muted");
    }

    function makeCard(file) {
      const previewUrl = URL.createObjectURL(file);
      const img = el("img", { src: previewUrl, alt: "" });
      img.addEventListener("load", () => URL.revokeObjectURL(previewUrl), { once: true });
      img.addEventListener(
        "error",
        () => {
          URL.revokeObjectURL(previewUrl);
          img.hidden = true; // the browser cannot show it either: keep the grey placeholder
        },
        { once: true },
      );
      const card = el(
        "li",
        { class: "upload-item", dataset: { status: "uploading" } },
        el("span", { class: "upload-thumb" }, img),
        el(
          "div",
          { class: "upload-body" },
          el(
            "div",
            { class: "upload-head" },
            el("span", { class: "upload-title" }, file.name || "Pasted image"),
            el("span", { class: "status status-uploading" }, "uploading"),
          ),
          el("p", { class: "upload-note muted" }, STATUS_NOTES.uploading),
          el("p", { class: "upload-duplicate", hidden: true }),
          el("p", { class: "upload-near muted", hidden: true }),
          el("p", { class: "upload-links", hidden: true }),
        ),
      );
      list.prepend(card);
      return card;
    }

    function setStatus(card, status, note) {
      card.dataset.status = status;
      const badge = $(".status", card);
      badge.className = `status status-${status}`;
      badge.textContent = status;
      const noteBox = $(".upload-note", card);
      noteBox.textContent = note || STATUS_NOTES[status] || "";
      noteBox.classList.toggle("error-text", status === "failed" || status === "rejected");
    }

    /** Public: searchable and its page is open to everyone (not waiting for or refused by a moderator). */
    const isPublic = (item) => item.status === "indexed" && (item.moderation || "approved") === "approved";

    function showDetails(card, item) {
      card.dataset.id = String(item.id);
      card.dataset.moderation = item.moderation || "approved";
      const titleBox = $(".upload-title", card);
      // Items that are not public yet come back without their details: keep what we know.
      const name = item.title || titleBox.textContent || `Image ${item.id}`;
      const viewable = Boolean(item.url) && (isPublic(item) || item.status === "processing" || item.status === "failed");
      titleBox.replaceWith(
        viewable ? el("a", { class: "upload-title", href: item.url }, name) : el("span", { class: "upload-title" }, name),
      );
      if (item.status !== "processing" && item.thumbnail_url) {
        const img = $(".upload-thumb img", card);
        img.src = item.thumbnail_url;
        img.alt = name;
        img.hidden = false;
      }
      const links = $(".upload-links", card);
      if (isPublic(item)) {
        links.replaceChildren(
          el("a", { href: item.url }, "View item"),
          " · ",
          el("a", { href: `${homeUrl}?item=${item.id}` }, "Find similar images"),
        );
      }
      links.hidden = !isPublic(item);
      const near = $(".upload-near", card);
      if (item.near_duplicate_of) {
        near.replaceChildren(
          "Looks like a near-duplicate of ",
          el("a", { href: itemUrl(item.near_duplicate_of) }, `item #${item.near_duplicate_of}`),
          ".",
        );
      }
      near.hidden = !item.near_duplicate_of;
    }

    function addCategoryOption(value) {
      if (!value || !categoryOptions) return;
      const known = Array.from(categoryOptions.options).some((o) => o.value === value);
      if (!known) categoryOptions.append(el("option", { value }));
    }

    /** Follow one item until it is no longer processing (every second; retries network hiccups). */
    async function follow(card, id, failures = 0) {
      let item;
      try {
        ({ body: item } = await requestJSON(`${apiRoot()}images/${id}`));
      } catch (err) {
        if (err.status === 404) {
          setStatus(card, "failed", "This image no longer exists.");
          return;
        }
        if (failures >= 30) {
          setStatus(card, card.dataset.status, `Lost track of the status: ${err.message}`);
          return;
        }
        setTimeout(() => follow(card, id, failures + 1), POLL_MS * 2);
        return;
      }
      const name = `“${item.title || $(".upload-title", card).textContent || `Image ${item.id}`}”`;
      const previous = card.dataset.status;
      const moderation = item.moderation || "approved";
      showDetails(card, item);
      let note = STATUS_NOTES[item.status];
      if (item.status === "failed") note = item.error || STATUS_NOTES.failed;
      else if (moderation === "pending") note = `${item.status === "indexed" ? "Indexed. " : ""}${MODERATION_NOTE}`;
      else if (moderation === "rejected") note = "Rejected by a moderator.";
      setStatus(card, item.status, note);
      if (item.status !== previous) {
        const words = {
          processing: `${name} is uploaded and processing…`,
          indexed:
            moderation === "pending"
              ? `${name} is indexed and waits for a moderator's approval.`
              : `${name} is indexed and searchable.`,
          failed: `${name} failed: ${item.error || "it could not be processed."}`,
          hidden: `${name} is hidden from search.`,
        };
        announce(words[item.status] || `${name}: ${item.status}`);
      }
      if (item.status === "processing") {
        setTimeout(() => follow(card, id, 0), POLL_MS);
      } else if (isPublic(item)) {
        addCategoryOption(item.category);
      }
    }

    async function uploadOne(file, fields) {
      const card = makeCard(file);
      const data = new FormData();
      data.append("image", file, file.name || "pasted.png");
      data.append("title", fields.title);
      data.append("category", fields.category);
      try {
        const { body } = await requestJSON(form.action, { method: "POST", body: data });
        card.dataset.id = String(body.id);
        if (body.title) $(".upload-title", card).textContent = body.title;
        if (body.duplicate) {
          card.dataset.duplicate = "true";
          const dup = $(".upload-duplicate", card);
          dup.replaceChildren(
            "Already in the gallery: ",
            el("a", { href: itemUrl(body.id) }, "see it here"),
            ".",
          );
          dup.hidden = false;
          announce(`“${file.name || "This image"}” is already in the gallery.`);
        }
        setStatus(card, body.status);
        await follow(card, body.id);
      } catch (err) {
        setStatus(card, "rejected", err.message);
        return `${file.name || "The image"}: ${err.message}`;
      }
      return null;
    }

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (busy) return;
      if (!chosen.length) {
        showAlert(errorBox, "Please choose an image file to upload.");
        zone.focus();
        return;
      }
      busy = true;
      submit.disabled = true;
      submit.textContent = "Uploading…";
      showAlert(errorBox, "");
      const batch = chosen;
      const fields = { title: title.value.trim(), category: category.value.trim() };
      chosen = [];
      renderSelection();
      const problems = [];
      try {
        for (const file of batch) {
          const problem = await uploadOne(file, fields);
          if (problem) problems.push(problem);
        }
      } finally {
        busy = false;
        submit.disabled = false;
        submit.textContent = "Upload";
        title.value = "";
      }
      if (problems.length) {
        showAlert(errorBox, problems.join(" "));
        if (problems.length === batch.length) announce("Nothing was uploaded.");
      }
    });

    setupDropzone(zone, input, choose);
  }

  const pages = { home: initHome, upload: initUpload };
  const start = () => pages[document.body.dataset.page]?.();
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
