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

  /** fetch + JSON; throws Error(message for a person) on network or API errors, AbortError when aborted. */
  async function requestJSON(url, options = {}) {
    let response;
    try {
      response = await fetch(url, { headers: { Accept: "application/json" }, ...options });
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
    const section = $("#results-section");
    const list = $("#results");
    const meta = $("#search-meta");
    const loading = $("#search-loading");
    const noResults = $("#no-results");

    let current = null; // the query File
    let previewUrl = null;
    let controller = null;

    function setLoading(on) {
      loading.hidden = !on;
      list.setAttribute("aria-busy", on ? "true" : "false");
      panel.classList.toggle("is-loading", on);
      section.classList.toggle("is-loading", on);
      if (on) {
        section.hidden = false;
        meta.textContent = "";
      }
    }

    function showQuery(file, label) {
      if (previewUrl) URL.revokeObjectURL(previewUrl);
      previewUrl = URL.createObjectURL(file);
      preview.src = previewUrl;
      preview.alt = `Your query image: ${label || file.name || "pasted image"}`;
      queryName.textContent = label || file.name || "Pasted image";
      query.hidden = false;
      panel.classList.add("has-query");
    }

    function renderResult(result) {
      const title = result.title || `Image ${result.id}`;
      const searchButton = el(
        "button",
        {
          type: "button",
          class: "btn btn-small search-this",
          "aria-label": `Search with “${title}”`,
          onclick: () => searchWithUrl(result.image_url, title),
        },
        "Search with this image",
      );
      return el(
        "li",
        { class: "card result", dataset: { id: String(result.id), score: String(result.score) } },
        el(
          "a",
          { class: "thumb", href: result.url },
          el("img", { src: result.thumbnail_url, alt: title, loading: "lazy" }),
        ),
        el("span", { class: "score", title: `Cosine similarity ${Number(result.score).toFixed(3)}` }, percent(result.score)),
        el(
          "div",
          { class: "card-body" },
          el("a", { class: "card-title", href: result.url }, title),
          result.category ? el("span", { class: "tag" }, result.category) : null,
          searchButton,
        ),
      );
    }

    function render(body) {
      const results = body.results || [];
      list.replaceChildren(...results.map(renderResult));
      const n = results.length;
      meta.textContent = `${n} result${n === 1 ? "" : "s"} · took ${Math.round(body.took_ms)} ms`;
      noResults.textContent = category.value
        ? `No similar images in “${category.value}”. Try “All categories”.`
        : "No similar images found. Is anything indexed yet?";
      noResults.hidden = n > 0;
      section.hidden = false;
    }

    async function runSearch() {
      if (!current) return;
      if (controller) controller.abort();
      const mine = new AbortController();
      controller = mine;
      const form = new FormData();
      form.append("image", current, current.name || "query.png");
      if (category.value) form.append("category", category.value);
      showAlert(errorBox, "");
      setLoading(true);
      try {
        const { body } = await requestJSON(searchUrl, { method: "POST", body: form, signal: mine.signal });
        if (controller === mine) render(body);
      } catch (err) {
        if (err.name === "AbortError" || controller !== mine) return;
        list.replaceChildren();
        noResults.hidden = true;
        section.hidden = true;
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
      current = file;
      showQuery(file, label);
      runSearch();
    }

    async function searchWithUrl(url, label) {
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
    category.addEventListener("change", runSearch);

    // /?item=<id>: "search with this image" from an item page.
    const itemId = new URLSearchParams(location.search).get("item");
    if (itemId && /^\d+$/.test(itemId)) {
      requestJSON(`${apiRoot()}images/${itemId}`)
        .then(({ body }) => searchWithUrl(body.image_url, body.title))
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
