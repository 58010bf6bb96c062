// streamer preview: lists sources, plays one over WebRTC, shows its newest crops.
"use strict";

const token = new URLSearchParams(location.search).get("token") || "";
const auth = token ? { Authorization: `Bearer ${token}` } : {};
const q = token ? `?token=${encodeURIComponent(token)}` : "";
let current = null; // { id, pc }
// A connection that ends while its source is shown (the server closed it, the network went,
// streamer restarted) is made again, after a wait that doubles up to a bound; the wait starts
// over after a connection that lasted, or when a source is picked. A connection reported
// "disconnected" has a grace period besides, to come back by itself.
const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 10000;
const LASTED_MS = 30000;
const DISCONNECTED_GRACE_MS = 3000; // (Chromium says so after ~5 s without an answer)
const GATHERING_MAX_MS = 5000;
const FINAL_STATUSES = [400, 401, 403, 404]; // trying again would give the same answer
let retryMs = RETRY_FIRST_MS;
let retryTimer = null;
let shownCrops = "";

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...auth, ...(options.headers || {}) } });
  if (!response.ok) {
    const error = new Error(`${path}: ${response.status} ${await response.text()}`);
    error.status = response.status;
    throw error;
  }
  return response.json();
}

function renderSources(stats) {
  const list = document.getElementById("sources");
  const ids = Object.keys(stats.sources);
  if (list.dataset.ids !== ids.join(",")) {
    list.dataset.ids = ids.join(",");
    list.replaceChildren(...ids.map((id) => {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.dataset.source = id;
      b.addEventListener("click", () => watch(id));
      li.append(b);
      return li;
    }));
  }
  for (const b of list.querySelectorAll("button")) {
    const s = stats.sources[b.dataset.source];
    b.setAttribute("aria-pressed", String(current && current.id === b.dataset.source));
    b.innerHTML = "";
    const name = document.createElement("strong");
    name.textContent = b.dataset.source;
    const state = document.createElement("span");
    state.className = `state ${s.state}`;
    state.textContent = s.state.replace("_", " ");
    const line = document.createElement("div");
    line.className = "muted";
    line.textContent = `${s.decoded} frames · ${s.paired} paired · ${s.crops} crops · ${s.expired} expired`;
    b.append(name, state, line);
  }
  if (current) {
    const s = stats.sources[current.id];
    document.getElementById("counters").textContent =
      `state ${s.state} · decoded ${s.decoded} · paired ${s.paired} · crops ${s.crops} · ` +
      `not tapped ${s.not_tapped} · expired ${s.expired} · reconnects ${s.reconnects}` +
      (s.last_error ? ` · last error: ${s.last_error}` : "");
  }
  document.getElementById("status").textContent = `up ${Math.round(stats.uptime_s)} s`;
}

function watchAgainLater(id, pc, why, graceMs = 0) {
  if (!current || current.pc !== pc || retryTimer !== null) return;
  document.getElementById("title").textContent = `${id}: ${why}, connecting again…`;
  const wait = graceMs + retryMs;
  retryMs = Math.min(2 * retryMs, RETRY_MAX_MS);
  retryTimer = setTimeout(() => {
    retryTimer = null;
    if (current && current.pc === pc) watch(id, false);
  }, wait);
}

function stopWatching(id, why) {
  if (current) current.pc.close();
  current = null;
  document.getElementById("title").textContent = `${id}: ${why}`;
  document.getElementById("video").srcObject = null;
  document.getElementById("video").hidden = true;
  document.getElementById("crops").replaceChildren();
  shownCrops = "";
}

async function watch(id, picked = true) {
  if (picked) retryMs = RETRY_FIRST_MS;
  clearTimeout(retryTimer);
  retryTimer = null;
  if (current) current.pc.close();
  const pc = new RTCPeerConnection({ iceServers: [] });
  current = { id, pc };
  try {
    await offer(id, pc);
  } catch (e) {
    if (current === null || current.pc !== pc) return; // another source was picked meanwhile
    if (e.status === 404) stopWatching(id, "no such source");
    else if (FINAL_STATUSES.includes(e.status)) stopWatching(id, `refused: ${e.message}`);
    else watchAgainLater(id, pc, `not connected (${e.status || e.message})`);
  }
}

async function offer(id, pc) {
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.ontrack = (event) => { document.getElementById("video").srcObject = event.streams[0] || new MediaStream([event.track]); };
  let connectedAt = null;
  pc.onconnectionstatechange = () => {
    if (!current || current.pc !== pc) return;
    const state = pc.connectionState;
    if (state === "connected") {
      connectedAt = Date.now();
      clearTimeout(retryTimer); // back from "disconnected" in time
      retryTimer = null;
      document.getElementById("title").textContent = id;
      return;
    }
    if (state !== "disconnected" && state !== "failed") return;
    if (connectedAt !== null && Date.now() - connectedAt > LASTED_MS) retryMs = RETRY_FIRST_MS;
    if (state === "failed") { // no grace left to wait for
      clearTimeout(retryTimer);
      retryTimer = null;
    }
    watchAgainLater(id, pc, state, state === "disconnected" ? DISCONNECTED_GRACE_MS : 0);
  };
  document.getElementById("viewer").hidden = false;
  document.getElementById("video").hidden = false;
  document.getElementById("hint").hidden = true;
  document.getElementById("title").textContent = id;
  shownCrops = "";
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    pc.addEventListener("icegatheringstatechange", () => { if (pc.iceGatheringState === "complete") resolve(); });
    setTimeout(resolve, GATHERING_MAX_MS); // a closed connection says nothing more
  });
  if (!current || current.pc !== pc) return; // another source was picked while gathering
  const answer = await api("/api/offer", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ source_id: id, sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
  });
  await pc.setRemoteDescription(answer);
}

async function refreshCrops() {
  const watching = current;
  if (!watching) return;
  const id = watching.id;
  const crops = await api(`/api/sources/${encodeURIComponent(id)}/crops`);
  if (current !== watching) return; // another source was picked meanwhile
  const keys = crops.map((c) => c.key).join(",");
  if (keys === shownCrops) return;
  shownCrops = keys;
  document.getElementById("crops").replaceChildren(...crops.map((c) => {
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    img.src = `/api/sources/${encodeURIComponent(id)}/crops/${c.key}.jpg${q}`;
    img.alt = `${c.class} crop from frame ${c.frame_id}`;
    const cap = document.createElement("figcaption");
    cap.textContent = `${c.class} ${c.confidence.toFixed(2)}` + (c.tracker_id != null ? ` #${c.tracker_id}` : "");
    fig.append(img, cap);
    return fig;
  }));
}

async function tick() {
  try {
    renderSources(await api("/api/sources"));
    await refreshCrops();
  } catch (e) {
    document.getElementById("status").textContent = String(e);
  }
}

// For tests and debugging: the current peer connection.
window.streamerPreview = { get pc() { return current && current.pc; } };

tick();
setInterval(tick, 1000);
setInterval(() => refreshCrops().catch(() => {}), 500);
