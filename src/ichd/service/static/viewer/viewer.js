// The web viewer of `ichd serve` (see ichd.service.viewer): study list, upload, slice viewer.
//
// Every data request goes through api() with "Authorization: Bearer <token>"; the token is asked once, kept in
// sessionStorage, and also taken from the URL fragment (#token=...), which is then removed from the address bar.
// Slice PNGs are fetched the same way and shown through blob: URLs. Nothing is loaded from another origin and no
// data is put into the page as HTML (text nodes only).
"use strict";

(() => {
  const LABELS = ["any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural"];
  const ABBR = {any: "ANY", epidural: "EDH", intraparenchymal: "IPH", intraventricular: "IVH",
                subarachnoid: "SAH", subdural: "SDH"};
  const COLORS = {any: "#f5f5f5", epidural: "#ff6b6b", intraparenchymal: "#ffa94d", intraventricular: "#69db7c",
                  subarachnoid: "#4dabf7", subdural: "#da77f2"};
  const WINDOWS = ["brain", "subdural", "soft_tissue", "bone"];
  const TOKEN_KEY = "ichd.viewer.token";
  const ROOT = new URL("../", document.baseURI);  // the service root (the page is at <root>/viewer/)
  const SVG_NS = "http://www.w3.org/2000/svg";
  const CACHE_LIMIT = 240;  // slice images kept as blob URLs
  const WHEEL_STEP = 50;  // pixels of wheel delta per slice (a mouse wheel notch is 100-120)
  const LIST_POLL_MS = 2000;
  const STUDY_POLL_MS = 1500;

  const $ = (id) => document.getElementById(id);

  const state = {
    token: null,
    route: null,
    listTimer: null,
    listData: null,
    studyTimer: null,
    study: null,      // StudyOut of the open study
    series: 0,
    result: null,     // the prediction of the shown series
    slice: 0,
    window: "brain",
    overlay: "",
    lastOverlay: "any",
    seg: false,       // draw the second reader's (BLAST-CT) segmentation

    model: null,
    wheel: 0,
    uploadFiles: [],
  };

  // ------------------------------------------------------------------------------------------- small helpers

  /** An element with attributes and children (strings become text nodes). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else if (k in node) node[k] = v;
      else node.setAttribute(k, v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  const fmt = (p) => (typeof p === "number" ? p.toFixed(3) : "–");
  const pct = (p) => (typeof p === "number" ? Math.round(p * 100) + " %" : "–");
  const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));
  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");
  // how a study arrived: upload (POST /v1/studies), dicom (the DICOM node) or dicomweb (STOW-RS)
  const sourceName = (source) => ({dicom: "DICOM", dicomweb: "DICOMweb"}[source] || source || "upload");
  const shortUid = (uid) => (uid && uid.length > 24 ? uid.slice(0, 10) + "…" + uid.slice(-10) : uid || "");

  function show(id, visible) { $(id).hidden = !visible; }

  function banner(message, hint) {
    $("banner-text").textContent = hint ? `${message} — ${hint}` : message;
    show("banner", true);
  }

  // --------------------------------------------------------------------------------------------------- token

  function readToken() {
    const params = new URLSearchParams(location.hash.slice(1));
    const fromUrl = params.get("token");
    if (fromUrl) {
      sessionStorage.setItem(TOKEN_KEY, fromUrl);
      params.delete("token");
      const rest = params.toString();
      history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
    }
    state.token = sessionStorage.getItem(TOKEN_KEY);
    show("signout", Boolean(state.token));
  }

  function setToken(token) {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    state.token = token || null;
    show("signout", Boolean(state.token));
  }

  // ----------------------------------------------------------------------------------------------------- API

  class ApiFailure extends Error {
    constructor(status, message, hint) {
      super(message);
      this.status = status;
      this.hint = hint || null;
    }
  }

  /** fetch() of an API path (relative to the service root) with the token; JSON, a Blob or the Response. */
  async function api(path, {method = "GET", body = null, as = "json"} = {}) {
    const headers = {};
    if (state.token) headers.Authorization = "Bearer " + state.token;
    let resp;
    try {
      resp = await fetch(new URL(path, ROOT), {method, headers, body, cache: "no-store", credentials: "omit"});
    } catch (e) {
      throw new ApiFailure(0, "the service cannot be reached", "is `ichd serve` still running?");
    }
    if (resp.status === 401) {
      askToken(state.token ? "The token was not accepted." : "");
      throw new ApiFailure(401, "token needed");
    }
    if (!resp.ok) {
      let message = `${resp.status} ${resp.statusText}`;
      let hint = null;
      try {
        const j = await resp.json();
        message = j.error || message;
        hint = j.hint;
      } catch (e) { /* not JSON: keep the status line */ }
      throw new ApiFailure(resp.status, message, hint);
    }
    if (as === "json") return resp.json();
    if (as === "blob") return resp.blob();
    return resp;
  }

  function report(e) {
    if (e instanceof ApiFailure && e.status === 401) return;  // the token form is shown
    if (e instanceof ApiFailure) banner(e.message, e.hint);
    else banner("unexpected error in the viewer: " + (e && e.message ? e.message : e));
  }

  // -------------------------------------------------------------------------------------------------- routes

  function stopTimers() {
    clearTimeout(state.listTimer);
    clearTimeout(state.studyTimer);
    state.listTimer = state.studyTimer = null;
  }

  function showView(name) {
    for (const v of ["token-view", "list-view", "study-view", "model-view"]) show(v, v === name);
  }

  function askToken(message) {
    stopTimers();
    state.route = "token";
    showView("token-view");
    $("token-error").textContent = message || "";
    show("token-error", Boolean(message));
    $("token-input").value = "";
    $("token-input").focus();
  }

  function route() {
    stopTimers();
    show("banner", false);
    const params = new URLSearchParams(location.hash.slice(1));
    if (params.has("study")) {
      openStudy(params.get("study"), parseInt(params.get("series") || "0", 10) || 0);
    } else if (params.has("model")) {
      openModelView();
    } else {
      openList();
    }
  }

  // ---------------------------------------------------------------------------------------------- study list

  function findingsText(study) {
    if (study.status !== "done") return "";
    return study.series.map((s) => {
      const calls = s.findings.filter((l) => l !== "any").map((l) => ABBR[l]);
      const any = `any ${pct(s.scan.any)}`;
      let text = s.scan_call === "not_assessable"
        ? `${any} · NOT ASSESSABLE (${(s.not_assessable_reason || "").replace(/_/g, " ")})`
        : s.findings.length ? `${any} · positive: ${calls.length ? calls.join(", ") : "ANY"}`
                            : `${any} · no hemorrhage called`;
      if (s.in_training_data) text += " · training data";
      return study.series.length > 1 ? `series ${s.index}: ${text}` : text;
    }).join("\n");
  }

  // ---- worklist order and filter: positive or not-assessable studies first (highest "any" probability first),
  // then studies in progress or failed (newest first), then negative ones (highest probability first)
  function needsReading(study) {
    return study.status === "done" &&
      study.series.some((s) => s.findings.length || s.scan_call === "not_assessable");
  }

  function maxAny(study) {
    return Math.max(-1, ...study.series.map((s) => (s.scan && typeof s.scan.any === "number" ? s.scan.any : -1)));
  }

  function urgencyGroup(study) {
    if (needsReading(study)) return 0;
    return study.status === "done" ? 2 : 1;
  }

  function sortStudies(studies, how) {
    const newest = (a, b) => (a.created_at < b.created_at ? 1 : a.created_at > b.created_at ? -1 : 0);
    const out = studies.slice();
    if (how === "received") return out.sort(newest);
    return out.sort((a, b) => urgencyGroup(a) - urgencyGroup(b) ||
      (urgencyGroup(a) === 1 ? newest(a, b) : maxAny(b) - maxAny(a)) || newest(a, b));
  }

  function keepStudy(study, filter) {
    if (filter === "attention") return needsReading(study);
    if (filter === "pending") return study.status === "queued" || study.status === "running";
    if (filter === "negative") return study.status === "done" && !needsReading(study);
    if (filter === "failed") return study.status === "failed";
    return true;
  }

  function studyRow(study) {
    const status = el("span", {class: `badge ${study.status}`}, study.status);
    const statusCell = el("td", {}, status);
    if (study.status === "failed" && study.error) statusCell.append(el("div", {class: "reason"}, study.error));
    const findings = el("td", {class: "findings-cell"}, findingsText(study));
    if (study.status === "done" && study.series.some((s) => s.findings.length)) findings.classList.add("positive");
    const busy = study.status === "queued" || study.status === "running";
    const actions = el("td", {class: "actions"},
      study.status === "done" ? el("a", {href: `#study=${study.study_id}`, class: "button"}, "Open") : null,
      busy ? el("span", {class: "muted"}, "processing…")
           : el("button", {type: "button", class: "link", "data-delete": study.study_id}, "Delete"));
    const descriptions = study.series.map((s) => s.series_description).filter(Boolean);
    return el("tr", {"data-study": study.study_id, "data-status": study.status,
                     "data-urgency": String(urgencyGroup(study))},
      el("td", {}, when(study.created_at)), el("td", {}, sourceName(study.source)),
      el("td", {class: "series-cell"}, descriptions.length ? descriptions.join("\n") : "—"),
      el("td", {class: "num"}, study.series.length ? study.series.map((s) => s.n_slices).join(" + ") : "—"),
      statusCell, findings,
      el("td", {}, `${study.n_files} (${(study.n_bytes / 1048576).toFixed(1)} MB)`), actions);
  }

  // a series still arriving over DICOM: not a study yet (no id), shown until the idle timeout completes it
  function receivingRow(r) {
    const what = `receiving ${r.n_instances} instance${r.n_instances === 1 ? "" : "s"}`;
    const from = [r.series_description, r.calling_ae ? `from ${r.calling_ae}` : "", "DICOM"].filter(Boolean);
    return el("tr", {"data-receiving": r.series_instance_uid, "data-status": "receiving"},
      el("td", {}, when(r.received_at)), el("td", {}, "DICOM"),
      el("td", {class: "series-cell"}, r.series_description || "—"), el("td", {class: "num"}, "…"),
      el("td", {}, el("span", {class: "badge receiving"}, what)),
      el("td", {class: "muted"}, `${from.join(" · ")}; complete after ${Math.ceil(r.complete_in_s)} s without a ` +
                                 "new instance"),
      el("td", {}, String(r.n_instances)), el("td", {class: "actions"}, el("span", {class: "muted"}, "receiving…")));
  }

  async function refreshList() {
    clearTimeout(state.listTimer);
    if (state.route !== "list") return;
    let data;
    try {
      data = await api("v1/studies");
    } catch (e) {
      report(e);
      return;
    }
    if (state.route !== "list") return;
    state.listData = data;
    renderList();
    const receiving = data.receiving || [];
    const busy = receiving.length > 0 || data.studies.some((s) => s.status === "queued" || s.status === "running");
    clearTimeout(state.listTimer);
    if (busy) state.listTimer = setTimeout(refreshList, LIST_POLL_MS);
  }

  function renderList() {
    const data = state.listData;
    if (!data) return;
    const filter = $("filter-select").value;
    const receiving = filter === "all" || filter === "pending" ? data.receiving || [] : [];
    const studies = sortStudies(data.studies.filter((s) => keepStudy(s, filter)), $("sort-select").value);
    const body = $("studies").querySelector("tbody");
    body.replaceChildren(...receiving.map(receivingRow), ...studies.map(studyRow));
    const any = studies.length + receiving.length > 0;
    show("studies-empty", !any);
    show("studies", any);
  }

  function openList() {
    state.route = "list";
    closeStudy();
    showView("list-view");
    refreshList();
  }

  function chooseUpload(files) {
    state.uploadFiles = Array.from(files || []);
    const n = state.uploadFiles.length;
    const mb = state.uploadFiles.reduce((a, f) => a + f.size, 0) / 1048576;
    $("upload-chosen").textContent = n ? `${n} file${n > 1 ? "s" : ""} (${mb.toFixed(1)} MB)` : "nothing chosen";
    $("upload-button").disabled = n === 0;
  }

  async function upload(event) {
    event.preventDefault();
    const files = state.uploadFiles;
    if (!files.length) return;
    const form = new FormData();
    for (const f of files) form.append("files", f, f.name);
    $("upload-button").disabled = true;
    $("upload-status").textContent = `uploading ${files.length} file(s)…`;
    try {
      const out = await api("v1/studies", {method: "POST", body: form});
      $("upload-status").textContent = `uploaded: job ${out.job_id.slice(0, 8)} is ${out.status}`;
      $("upload-files").value = "";
      $("upload-folder").value = "";
      chooseUpload([]);
      refreshList();
    } catch (e) {
      $("upload-status").textContent = "upload refused";
      $("upload-button").disabled = false;
      report(e);
    }
  }

  // --------------------------------------------------------------------------------------------- study view

  const cache = new Map();  // key -> blob URL (insertion order = age)

  function clearCache() {
    for (const url of cache.values()) URL.revokeObjectURL(url);
    cache.clear();
  }

  function cachePut(key, url) {
    cache.set(key, url);
    while (cache.size > CACHE_LIMIT) {
      const [oldKey, oldUrl] = cache.entries().next().value;
      if (oldUrl === $("slice-img").src) break;
      cache.delete(oldKey);
      URL.revokeObjectURL(oldUrl);
    }
  }

  function closeStudy() {
    state.study = null;
    state.result = null;
    clearCache();
    $("slice-img").removeAttribute("src");
  }

  async function openStudy(studyId, series) {
    state.route = "study";
    showView("study-view");
    if (!state.study || state.study.study_id !== studyId) closeStudy();
    show("study-body", false);
    $("study-title").textContent = "Study";
    $("study-status").textContent = "";
    let study;
    try {
      study = await api(`v1/studies/${encodeURIComponent(studyId)}`);
    } catch (e) {
      report(e);
      return;
    }
    if (state.route !== "study") return;
    // the series description(s) tell studies apart; the source and time say where and when it came from
    const names = (study.series || []).map((s) => s.series_description).filter(Boolean);
    const source = sourceName(study.source);
    $("study-title").textContent = `${names.length ? names.join(", ") : "Study"} · ${source}, ${when(study.created_at)}`;
    $("study-status").textContent = study.status;
    $("study-status").className = `badge ${study.status}`;
    if (study.status !== "done") {
      const wait = study.status === "failed" ? `This study failed: ${study.error || "no reason recorded"}`
                                             : `The study is ${study.status}; this page updates when it is done.`;
      $("study-wait").textContent = wait;
      show("study-wait", true);
      if (study.status === "running") showProgress(study);
      if (study.status !== "failed") state.studyTimer = setTimeout(() => openStudy(studyId, series), STUDY_POLL_MS);
      return;
    }
    show("study-wait", false);
    series = clamp(series, 0, Math.max(0, study.series.length - 1));
    let result;
    try {
      result = await api(`v1/studies/${study.study_id}/result`);
    } catch (e) {
      report(e);
      return;
    }
    if (state.route !== "study") return;
    const uid = study.series[series].series_instance_uid;
    const results = Array.isArray(result) ? result : [result];
    const prediction = results.find((r) => r.series_instance_uid === uid) || results[series] || results[0];
    const sameSeries = state.study && state.study.study_id === study.study_id && state.series === series;
    state.study = study;
    state.series = series;
    state.result = prediction;
    if (!sameSeries) state.slice = initialSlice(prediction);
    renderSeriesChoice();
    renderSummary();
    renderWarnings();
    buildCurve();
    renderOrientation(prediction.display_orientation);
    $("slice-range").max = String(prediction.n_slices - 1);
    show("study-body", true);
    renderToolbar();
    showSlice();
    $("stage").focus({preventScroll: true});
    loadModel().then(renderModelLine).catch(report);
  }

  /** Orientation markers on the image's edges from the result's display_orientation (the patient direction
   * along a row and along a column, e.g. L and P: the patient's right on the image's left); none when unknown. */
  function renderOrientation(o) {
    const opposite = {L: "R", R: "L", A: "P", P: "A", H: "F", F: "H"};
    const marks = o ? {left: opposite[o.row] || "", right: o.row, top: opposite[o.column] || "", bottom: o.column}
      : {left: "", right: "", top: "", bottom: ""};
    for (const [side, letter] of Object.entries(marks)) {
      const m = $(`orient-${side}`);
      m.textContent = letter;
      m.hidden = !letter;
    }
  }

  /** A running job's progress (the second reader's blocks), under the waiting note. */
  async function showProgress(study) {
    try {
      const job = await api(`v1/jobs/${study.job_id}`);
      const p = job.progress;
      if (p && p.total && state.route === "study") {
        $("study-wait").textContent = `The study is running: second reader (BLAST-CT) segmenting, block ` +
          `${p.done} of ${p.total} (${Math.round(100 * p.done / p.total)} %).`;
      }
    } catch (e) {
      report(e);
    }
  }

  /** The slice with the highest "any" probability (where to start looking). */
  function initialSlice(prediction) {
    let best = 0;
    prediction.slices.forEach((s, i) => {
      if (s.probabilities.any > prediction.slices[best].probabilities.any) best = i;
    });
    return best;
  }

  function renderSeriesChoice() {
    const sel = $("series-select");
    const series = state.study.series;
    sel.replaceChildren(...series.map((s) =>
      el("option", {value: String(s.index)}, `${s.index}: ${shortUid(s.series_instance_uid)} (${s.n_slices} slices)`)));
    sel.value = String(state.series);
    show("series-choice", series.length > 1);
  }

  function renderSummary() {
    const r = state.result;
    const positive = LABELS.filter((l) => r.scan_positive[l]);
    const subtypes = positive.filter((l) => l !== "any");
    const findings = $("findings");
    const na = r.scan_call === "not_assessable";
    if (na) {
      findings.textContent = "Not assessable: " + (r.not_assessable_reason === "contrast_enhanced"
        ? "the series looks contrast-enhanced (or a CT angiography); the model is for non-contrast head CT, " +
          "where iodine looks like blood, so no call is made"
        : ((r.warnings || []).find((w) => w.code === r.not_assessable_reason) || {}).message
          || (r.not_assessable_reason || "").replace(/_/g, " "));
      findings.className = "findings na";
    } else if (positive.length) {
      findings.textContent = "Hemorrhage suspected" + (subtypes.length ? ": " + subtypes.map((l) => `${l} (${ABBR[l]})`).join(", ") : "");
      findings.className = "findings positive";
    } else {
      findings.textContent = "No hemorrhage above the model's thresholds";
      findings.className = "findings negative";
    }
    const rows = LABELS.map((l) => el("tr", {class: r.scan_positive[l] ? "pos" : ""},
      el("td", {}, el("span", {class: `swatch sw-${l}`}), ` ${l} `, el("span", {class: "muted"}, ABBR[l])),
      el("td", {class: "num"}, fmt(r.scan[l])), el("td", {class: "num"}, fmt(r.thresholds[l])),
      el("td", {}, na ? "not assessable" : r.scan_positive[l] ? "positive" : "negative")));
    $("summary").querySelector("tbody").replaceChildren(...rows);
    const model = r.model || {};
    const skipped = (r.skipped_slices || []).length;
    const prov = r.provenance || {};
    $("summary-note").textContent = `${r.n_slices} slices · scan probability = ${model.scan_rule || "max"} over slices` +
      ` · model ${model.name || "?"} ${model.version || ""}${model.tta ? " (TTA)" : ""}` +
      (skipped ? ` · ${skipped} slice(s) without head tissue not scored (P = 0)` : "") +
      (prov.in_training_data ? ` · TRAINING DATA: ${prov.note}` : "");
  }

  function renderWarnings() {
    const list = $("warnings");
    const warnings = state.result.warnings || [];
    if (!warnings.length) {
      list.replaceChildren(el("li", {class: "muted"}, "none"));
      return;
    }
    // files are relative to the upload (the service never shows its own folders)
    const files = (w) => (w.files && w.files.length
      ? ` (files: ${w.files.slice(0, 5).join(", ")}${w.files.length > 5 ? `, and ${w.files.length - 5} more` : ""})`
      : "");
    list.replaceChildren(...warnings.map((w) => el("li", {}, el("code", {}, w.code), " ", w.message, files(w))));
  }

  // ------------------------------------------------------------------------------------------------- slices

  function sliceKey() {
    return [state.study.study_id, state.series, state.slice, state.window, state.overlay, hasSeg() && state.seg]
      .join("/");
  }

  function sliceUrl() {
    const q = new URLSearchParams({window: state.window, series: String(state.series)});
    if (state.overlay) q.set("overlay", state.overlay);
    if (hasSeg() && state.seg) q.set("seg", "true");
    return `v1/studies/${state.study.study_id}/slices/${state.slice}.png?${q}`;
  }

  let pending = null;  // the newest slice image wanted and not cached
  let loading = false;

  function display(key) {
    const img = $("slice-img");
    const [, , slice, win, overlay] = key.split("/");
    img.src = cache.get(key);
    img.dataset.slice = slice;
    img.dataset.window = win;
    img.dataset.overlay = overlay;
  }

  /** Show the current slice: from the cache, or fetched (one request at a time; only the newest wish is kept). */
  function showSlice() {
    if (!state.result) return;
    renderSlicePosition();
    const key = sliceKey();
    if (cache.has(key)) {
      display(key);
      return;
    }
    pending = {key, url: sliceUrl()};
    pump();
  }

  async function pump() {
    if (loading) return;
    loading = true;
    show("slice-loading", true);
    try {
      while (pending) {
        const want = pending;
        pending = null;
        if (!cache.has(want.key)) {
          const blob = await api(want.url, {as: "blob"});
          if (!state.study || !want.key.startsWith(state.study.study_id + "/")) continue;  // study closed meanwhile
          cachePut(want.key, URL.createObjectURL(blob));
        }
        if (state.study && want.key === sliceKey()) display(want.key);
      }
    } catch (e) {
      pending = null;
      report(e);
    } finally {
      loading = false;
      show("slice-loading", false);
    }
  }

  function goTo(index) {
    if (!state.result) return;
    const next = clamp(index, 0, state.result.n_slices - 1);
    if (next === state.slice) return;
    state.slice = next;
    showSlice();
  }

  function renderSlicePosition() {
    const r = state.result;
    const s = r.slices[state.slice];
    $("slice-label").textContent = `Slice ${state.slice} of 0–${r.n_slices - 1}` +
      (s && typeof s.z_mm === "number" ? ` · z ${s.z_mm.toFixed(1)} mm` : "");
    $("slice-label").dataset.index = String(state.slice);
    $("slice-range").value = String(state.slice);
    const probs = $("slice-probs");
    probs.replaceChildren(...LABELS.map((l) => el("span", {
      class: `p ${s && s.probabilities[l] >= r.thresholds[l] ? "over" : ""} ${l === highlighted() ? "hl" : ""}`,
    }, `${ABBR[l]} ${fmt(s ? s.probabilities[l] : null)}`)));
    placeMarker();
  }

  function setWindow(name) {
    if (!WINDOWS.includes(name) || name === state.window) return;
    state.window = name;
    renderToolbar();
    showSlice();
  }

  function setOverlay(label) {
    if (label === state.overlay) return;
    if (label) state.lastOverlay = label;
    state.overlay = label;
    renderToolbar();
    buildCurve();
    showSlice();
  }

  /** Whether the shown series has a second-reader segmentation. */
  function hasSeg() {
    const s = state.study && state.study.series[state.series];
    return Boolean(s && s.second_reader);
  }

  function setSeg(on) {
    if (!hasSeg() || on === state.seg) return;
    state.seg = on;
    renderToolbar();
    showSlice();
  }

  function renderToolbar() {
    show("seg-toggle", hasSeg());
    $("seg-button").setAttribute("aria-pressed", String(hasSeg() && state.seg));
    const sr = hasSeg() ? state.study.series[state.series].second_reader : null;
    $("seg-volumes").textContent = sr ? `hemorrhage ${sr.hemorrhage_ml.toFixed(1)} mL (IPH ` +
      `${sr.volumes_ml.iph.toFixed(1)}, EAH ${sr.volumes_ml.eah.toFixed(1)}, IVH ${sr.volumes_ml.ivh.toFixed(1)}; ` +
      `oedema ${sr.volumes_ml.oedema.toFixed(1)})` : "";
    for (const b of $("windows").querySelectorAll("button")) {
      b.setAttribute("aria-pressed", String(b.dataset.window === state.window));
    }
    for (const b of $("overlays").querySelectorAll("button")) {
      b.setAttribute("aria-pressed", String(b.dataset.overlay === state.overlay));
    }
  }

  // -------------------------------------------------------------------------------------------------- curve

  const CURVE = {w: 640, h: 170, l: 36, r: 10, t: 10, b: 24};
  const highlighted = () => state.overlay || "any";

  function curveX(i) {
    const n = state.result.n_slices;
    const pw = CURVE.w - CURVE.l - CURVE.r;
    return CURVE.l + (n > 1 ? (i * pw) / (n - 1) : pw / 2);
  }

  const curveY = (p) => CURVE.t + (1 - p) * (CURVE.h - CURVE.t - CURVE.b);

  /** The per-slice probability curve (inline SVG): one line per class, the highlighted class (the overlay's, or
   *  "any") on top with its threshold; a marker at the shown slice; a click jumps to the nearest slice. */
  function buildCurve() {
    const r = state.result;
    if (!r) return;
    const root = svg("svg", {id: "curve-svg", viewBox: `0 0 ${CURVE.w} ${CURVE.h}`, role: "img",
                             "aria-label": "per-slice probability of each class; click to show a slice"});
    const hl = highlighted();
    for (const p of [0, 0.5, 1]) {
      root.append(svg("line", {x1: CURVE.l, x2: CURVE.w - CURVE.r, y1: curveY(p), y2: curveY(p), class: "grid"}));
      const t = svg("text", {x: CURVE.l - 6, y: curveY(p) + 4, class: "axis", "text-anchor": "end"});
      t.textContent = p.toFixed(1);
      root.append(t);
    }
    const n = r.n_slices;
    const step = n > 60 ? 20 : n > 20 ? 10 : 5;
    for (let i = 0; i < n; i += step) {
      const t = svg("text", {x: curveX(i), y: CURVE.h - 6, class: "axis", "text-anchor": "middle"});
      t.textContent = String(i);
      root.append(t);
    }
    const th = r.thresholds[hl];
    root.append(svg("line", {x1: CURVE.l, x2: CURVE.w - CURVE.r, y1: curveY(th), y2: curveY(th), class: "threshold",
                             stroke: COLORS[hl]}));
    for (const l of [...LABELS.filter((x) => x !== hl), hl]) {
      const points = r.slices.map((s, i) => `${curveX(i).toFixed(1)},${curveY(s.probabilities[l]).toFixed(1)}`);
      root.append(svg("polyline", {points: points.join(" "), fill: "none", stroke: COLORS[l],
                                   class: `line lab-${l}${l === hl ? " hl" : ""}`, "data-label": l}));
    }
    for (const f of r.flagged_slices || []) {
      root.append(svg("circle", {cx: curveX(f.index), cy: CURVE.t, r: 3, class: "flag", fill: COLORS[f.label]}));
    }
    root.append(svg("line", {id: "curve-marker", y1: CURVE.t, y2: CURVE.h - CURVE.b, class: "marker"}));
    root.append(svg("circle", {id: "curve-dot", r: 4, class: "dot", fill: COLORS[hl]}));
    root.append(svg("rect", {x: 0, y: 0, width: CURVE.w, height: CURVE.h, class: "hit"}));
    root.addEventListener("click", (e) => goTo(curveIndexAt(root, e.clientX)));
    $("curve").replaceChildren(root);
    $("curve-legend").replaceChildren(...LABELS.map((l) => el("span", {class: `item${l === hl ? " hl" : ""}`},
      el("span", {class: `swatch sw-${l}`}), `${ABBR[l]} ${pct(r.scan[l])}`)));
    placeMarker();
  }

  function curveIndexAt(root, clientX) {
    const box = root.getBoundingClientRect();
    const x = ((clientX - box.left) * CURVE.w) / box.width;
    const n = state.result.n_slices;
    const pw = CURVE.w - CURVE.l - CURVE.r;
    return clamp(Math.round(n > 1 ? ((x - CURVE.l) * (n - 1)) / pw : 0), 0, n - 1);
  }

  function placeMarker() {
    const marker = $("curve-marker");
    if (!marker || !state.result) return;
    const x = curveX(state.slice);
    marker.setAttribute("x1", x);
    marker.setAttribute("x2", x);
    marker.dataset.index = String(state.slice);
    const dot = $("curve-dot");
    const s = state.result.slices[state.slice];
    dot.setAttribute("cx", x);
    dot.setAttribute("cy", curveY(s ? s.probabilities[highlighted()] : 0));
  }

  // -------------------------------------------------------------------------------------------------- model

  async function loadModel() {
    if (!state.model) state.model = await api("v1/model");
    return state.model;
  }

  function modelLine(m) {
    return `${m.name} ${m.version} (${m.source}, sha256 ${m.sha256.slice(0, 12)}…) · ${m.intended_use || "research use"}`;
  }

  function renderModelLine(m) {
    $("model-line").textContent = modelLine(m);
    if (m.evidence_map) {  // what the heat maps are (the model's lesion map, or Grad-CAM)
      const label = $("overlays").querySelector(".seg-label");
      label.textContent = m.evidence_map.name;
      label.title = m.evidence_map.description;
      $("overlays").setAttribute("aria-label", `${m.evidence_map.name} overlay`);
    }
    const card = $("model-card");
    if (!card.childElementCount) renderMarkdown(m.model_card || "This model has no model card.", card);
  }

  async function openModelView() {
    state.route = "model";
    closeStudy();
    showView("model-view");
    try {
      const m = await loadModel();
      $("model-view-line").textContent = modelLine(m);
      renderMarkdown(m.model_card || "This model has no model card.", $("model-view-card"));
    } catch (e) {
      report(e);
    }
  }

  /** Inline Markdown (**bold**, `code`) as nodes. */
  function inline(text) {
    return text.split(/(\*\*[^*]+\*\*|`[^`]+`)/).filter(Boolean).map((part) => {
      if (part.startsWith("**") && part.endsWith("**") && part.length > 4) return el("strong", {}, part.slice(2, -2));
      if (part.startsWith("`") && part.endsWith("`") && part.length > 2) return el("code", {}, part.slice(1, -1));
      return document.createTextNode(part.replace(/\[([^\]]+)\]\([^)]*\)/g, "$1"));
    });
  }

  /** The model card's Markdown (headings, lists, quotes, tables, paragraphs) as DOM nodes: text only, no HTML. */
  function renderMarkdown(text, target) {
    const out = [];
    let para = null;
    let list = null;
    let table = null;
    const flush = () => { para = list = table = null; };
    for (const raw of text.split("\n")) {
      const line = raw.trimEnd();
      const heading = /^(#{1,4})\s+(.*)$/.exec(line);
      if (!line.trim()) { flush(); continue; }
      if (heading) {
        flush();
        out.push(el(`h${Math.min(6, heading[1].length + 3)}`, {}, inline(heading[2])));
      } else if (/^\s*[-*]\s+/.test(line)) {
        para = table = null;
        if (!list) { list = el("ul"); out.push(list); }
        list.append(el("li", {}, inline(line.replace(/^\s*[-*]\s+/, ""))));
      } else if (line.startsWith("|")) {
        para = list = null;
        const cells = line.replace(/^\||\|$/g, "").split("|").map((c) => c.trim());
        if (cells.every((c) => /^:?-{2,}:?$/.test(c))) continue;
        if (!table) { table = el("table", {class: "md"}); out.push(table); }
        table.append(el("tr", {}, cells.map((c) => el(table.rows.length ? "td" : "th", {}, inline(c)))));
      } else if (line.startsWith(">")) {
        flush();
        out.push(el("blockquote", {}, inline(line.replace(/^>\s?/, ""))));
      } else if (list && /^\s+/.test(raw)) {
        list.lastChild.append(" ", ...inline(line.trim()));
      } else {
        list = table = null;
        if (!para) { para = el("p"); out.push(para); } else para.append(" ");
        para.append(...inline(line.trim()));
      }
    }
    target.replaceChildren(...out);
  }

  // ---------------------------------------------------------------------------------------------- downloads

  async function download(path, name) {
    try {
      const blob = await api(path, {as: "blob"});
      const url = URL.createObjectURL(blob);
      const a = el("a", {href: url, download: name});
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (e) {
      report(e);
    }
  }

  /** Delete a study (after a confirmation), then show the list. */
  async function deleteStudy(studyId) {
    if (!studyId || !window.confirm("Delete this study and every file of it from the server?")) return;
    try {
      await api(`v1/studies/${studyId}`, {method: "DELETE"});
    } catch (e) {
      report(e);
      return;
    }
    if (state.route === "list") refreshList();
    else location.hash = "";
  }

  // ------------------------------------------------------------------------------------------------- events

  function onKey(e) {
    if (state.route !== "study" || !state.result || e.altKey || e.ctrlKey || e.metaKey) return;
    const tag = e.target && e.target.tagName;
    if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") return;
    const n = state.result.n_slices;
    const moves = {ArrowUp: 1, ArrowRight: 1, ArrowDown: -1, ArrowLeft: -1, PageUp: 5, PageDown: -5};
    if (e.key in moves) goTo(state.slice + moves[e.key]);
    else if (e.key === "Home") goTo(0);
    else if (e.key === "End") goTo(n - 1);
    else if (/^[1-4]$/.test(e.key)) setWindow(WINDOWS[Number(e.key) - 1]);
    else if (e.key === "o" || e.key === "O") setOverlay(state.overlay ? "" : state.lastOverlay);
    else if ((e.key === "s" || e.key === "S") && hasSeg()) setSeg(!state.seg);
    else return;
    e.preventDefault();
  }

  function onWheel(e) {
    if (!state.result) return;
    e.preventDefault();
    const dy = e.deltaMode === 1 ? e.deltaY * 40 : e.deltaMode === 2 ? e.deltaY * 800 : e.deltaY;
    state.wheel = Math.abs(dy) >= WHEEL_STEP ? dy : state.wheel + dy;
    if (Math.abs(state.wheel) >= WHEEL_STEP) {
      goTo(state.slice + (state.wheel < 0 ? 1 : -1));  // wheel up: superior (higher index)
      state.wheel = 0;
    }
  }

  function init() {
    readToken();
    $("token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      setToken($("token-input").value.trim());
      route();
    });
    $("signout").addEventListener("click", () => { setToken(null); askToken(""); });
    $("banner-close").addEventListener("click", () => show("banner", false));
    $("upload-files").addEventListener("change", (e) => chooseUpload(e.target.files));
    $("upload-folder").addEventListener("change", (e) => chooseUpload(e.target.files));
    $("upload-form").addEventListener("submit", upload);
    $("sort-select").addEventListener("change", renderList);
    $("filter-select").addEventListener("change", renderList);
    $("windows").addEventListener("click", (e) => { if (e.target.dataset.window) setWindow(e.target.dataset.window); });
    $("overlays").addEventListener("click", (e) => {
      if (e.target.dataset.overlay !== undefined) setOverlay(e.target.dataset.overlay);
    });
    $("seg-button").addEventListener("click", () => setSeg(!state.seg));
    $("stage").addEventListener("wheel", onWheel, {passive: false});
    $("slice-range").addEventListener("input", (e) => goTo(Number(e.target.value)));
    $("series-select").addEventListener("change", (e) => {
      location.hash = `study=${state.study.study_id}&series=${e.target.value}`;
    });
    $("dl-json").addEventListener("click", () =>
      download(`v1/studies/${state.study.study_id}/result`, `ichd-${state.study.study_id.slice(0, 8)}.json`));
    $("dl-report").addEventListener("click", () =>
      download(`v1/studies/${state.study.study_id}/report?series=${state.series}`,
               `ichd-${state.study.study_id.slice(0, 8)}-report.html`));
    $("dl-sr").addEventListener("click", () =>
      download(`v1/studies/${state.study.study_id}/dicom/sr?series=${state.series}`,
               `ichd-${state.study.study_id.slice(0, 8)}-sr.dcm`));
    $("delete-study").addEventListener("click", () => deleteStudy(state.study && state.study.study_id));
    $("studies").addEventListener("click", (e) => {
      if (e.target.dataset && e.target.dataset.delete) deleteStudy(e.target.dataset.delete);
    });
    document.addEventListener("keydown", onKey);
    window.addEventListener("hashchange", () => { readToken(); route(); });
    route();
  }

  document.addEventListener("DOMContentLoaded", init);
})();
