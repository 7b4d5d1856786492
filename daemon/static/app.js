// Talking Head Cam control page: preview, status, avatars, live settings, remote mode.
// Plain JS, no build step. Talks to the daemon's JSON API under /api/ and to its WebRTC
// endpoints (/api/preview, /api/remote). The token, when the daemon needs one, comes from
// the page's address once (http://HOST:PORT/#token=TOKEN) and is kept for this tab only.
"use strict";

const THC = (() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "talking-head-cam-token";
  const GATHER_TIMEOUT_MS = 500; // never wait forever for ICE gathering (machines with only lo)
  const sessions = new Map(); // peer id → {pc, kind, stream}
  let settings = null;
  let avatars = { avatars: [], current: null };

  // ---------------------------------------------------------------- the API

  function takeToken() {
    const match = location.hash.match(/(?:^#|&)token=([^&]+)/);
    if (match) {
      sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
      history.replaceState(null, "", location.pathname + location.search); // out of the address bar
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }
  const token = takeToken();

  function authHeaders(headers = {}) {
    return token ? { ...headers, Authorization: `Bearer ${token}` } : headers;
  }

  class ApiError extends Error {
    constructor(status, body) {
      super(body && body.error ? body.error : `HTTP ${status}`);
      this.status = status;
      this.problems = (body && body.problems) || [];
    }
  }

  async function api(path, { method = "GET", body, keepalive = false } = {}) {
    const init = { method, headers: authHeaders(), keepalive };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    const type = response.headers.get("Content-Type") || "";
    const data = type.includes("json") ? await response.json() : await response.blob();
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  function say(text, isError = false) {
    const el = $("message");
    el.textContent = text;
    el.className = isError ? "error" : "";
  }

  function fail(error) {
    if (error.status === 401) {
      say("This daemon needs its token: open the page as http://HOST:PORT/#token=TOKEN", true);
    } else {
      const more = error.problems && error.problems.length ? ` (${error.problems.join("; ")})` : "";
      say(`${error.message}${more}`, true);
    }
    console.warn(error);
  }

  // ---------------------------------------------------------------- WebRTC

  function gathered(pc, timeoutMs) {
    return new Promise((resolve) => {
      if (pc.iceGatheringState === "complete") return resolve();
      const timer = setTimeout(resolve, timeoutMs);
      pc.addEventListener("icegatheringstatechange", () => {
        if (pc.iceGatheringState === "complete") {
          clearTimeout(timer);
          resolve();
        }
      });
    });
  }

  // Opens a peer: kind "preview" receives the published video; kind "remote" sends `stream`
  // (a camera) and receives the avatar made from it. Resolves to {id, pc, stream, answer}.
  async function connect(kind, { stream = null, avatar = null } = {}) {
    const pc = new RTCPeerConnection({ iceServers: [] });
    const received = new Promise((resolve) => {
      pc.addEventListener("track", (event) => {
        if ("jitterBufferTarget" in event.receiver) event.receiver.jitterBufferTarget = 0;
        resolve(new MediaStream([event.track]));
      });
    });
    if (stream) {
      for (const track of stream.getVideoTracks()) pc.addTrack(track, stream);
    } else {
      pc.addTransceiver("video", { direction: "recvonly" });
    }
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc, GATHER_TIMEOUT_MS);
    const body = { sdp: pc.localDescription.sdp, type: "offer" };
    if (avatar) body.avatar = avatar;
    let answer;
    try {
      answer = await api(kind === "preview" ? "/api/preview" : "/api/remote", { method: "POST", body });
    } catch (error) {
      pc.close();
      throw error;
    }
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    const session = { id: answer.id, kind, pc, answer, stream: await received };
    sessions.set(session.id, session);
    pc.addEventListener("connectionstatechange", () => {
      if (["failed", "closed"].includes(pc.connectionState)) sessions.delete(session.id);
    });
    return session;
  }

  function disconnect(id) {
    const session = sessions.get(id);
    if (!session) return Promise.resolve();
    sessions.delete(id);
    session.pc.close();
    return api(`/api/peers/${id}`, { method: "DELETE", keepalive: true }).catch(() => {});
  }

  let previewId = null;
  async function startPreview() {
    const session = await connect("preview");
    previewId = session.id;
    $("preview").srcObject = session.stream;
    $("preview-info").textContent = "preview connecting";
    session.pc.addEventListener("connectionstatechange", () => {
      $("preview-info").textContent = `preview ${session.pc.connectionState}`;
    });
    return session;
  }

  // The preview pauses while this page runs remote mode: both ends have less to encode and
  // decode, which keeps the avatar's round trip short on small machines.
  async function pausePreview() {
    if (previewId === null) return;
    const id = previewId;
    previewId = null;
    await disconnect(id);
    $("preview").srcObject = null;
    $("preview-info").textContent = "preview paused while remote mode runs";
  }

  let remoteId = null;
  async function startRemote(stream, avatar = null) {
    await pausePreview();
    const session = await connect("remote", { stream, avatar });
    remoteId = session.id;
    $("remote").srcObject = session.stream;
    $("remote-stop").disabled = false;
    $("remote-start").disabled = true;
    const [w, h] = session.answer.size;
    $("remote-info").textContent = `remote peer ${session.id}: avatar ${session.answer.avatar}, ${w}x${h}`;
    return session;
  }

  async function stopRemote() {
    const id = remoteId;
    remoteId = null;
    const session = sessions.get(id);
    if (session) {
      for (const sender of session.pc.getSenders()) if (sender.track) sender.track.stop();
    }
    await disconnect(id);
    $("remote").srcObject = null;
    $("remote-stop").disabled = true;
    $("remote-start").disabled = false;
    $("remote-info").textContent = "";
    const remotes = [...sessions.values()].filter((s) => s.kind === "remote");
    if (!remotes.length && previewId === null) await startPreview();
  }

  // ---------------------------------------------------------------- status

  function text(value) {
    return value === null || value === undefined ? "" : String(value);
  }

  function fillList(el, items) {
    el.replaceChildren(
      ...items.map((item) => {
        const li = document.createElement("li");
        li.textContent = item;
        return li;
      }),
    );
  }

  function renderStatus(status) {
    const badge = $("state");
    badge.textContent = status.state;
    badge.className = `badge ${status.state}`;
    const camera = status.camera || {};
    const rows = [
      ["face", status.face],
      ["fps", status.fps.toFixed(1)],
      ["output", `${status.output.width}x${status.output.height} @ ${status.output.fps}`],
      ["camera", `${text(camera.source)}: ${text(camera.state)} ${text(camera.detail)}`],
      ["avatar", status.avatar_name || status.avatar],
      ["frames", status.frames_published],
    ];
    $("status").replaceChildren(
      ...rows.flatMap(([key, value]) => {
        const dt = document.createElement("dt");
        const dd = document.createElement("dd");
        dt.textContent = key;
        dd.textContent = text(value);
        return [dt, dd];
      }),
    );
    $("stages").tBodies[0].replaceChildren(
      ...Object.entries(status.stages_ms).map(([name, s]) => {
        const tr = document.createElement("tr");
        for (const cell of [name, s.median.toFixed(1), s.p95.toFixed(1)]) {
          const td = document.createElement("td");
          td.textContent = cell;
          tr.append(td);
        }
        return tr;
      }),
    );
    fillList($("sinks"), status.sinks.map((s) => `${s.name}: ${s.state} ${s.detail}`));
    fillList(
      $("peers"),
      status.peers.map((p) => {
        const extra = p.kind === "remote" ? `, avatar ${p.avatar}, face ${p.face}` : "";
        return `${p.id} ${p.kind} ${p.state}${extra}, ${p.frames_sent} frames sent`;
      }),
    );
  }

  async function pollStatus() {
    try {
      renderStatus(await api("/api/status"));
      if (avatars.avatars.some((a) => a.state === "preparing")) await loadAvatars();
    } catch (error) {
      $("state").textContent = error.status === 401 ? "token needed" : "unreachable";
      $("state").className = "badge error";
      if (error.status === 401) fail(error);
    }
  }

  // ---------------------------------------------------------------- avatars

  const thumbs = new Map(); // name → object URL

  async function thumbnail(name, img) {
    if (!thumbs.has(name)) thumbs.set(name, URL.createObjectURL(await api(`/api/avatars/${name}/image`)));
    img.src = thumbs.get(name);
  }

  function avatarCard(entry) {
    const card = document.createElement("div");
    card.className = `avatar${entry.name === avatars.current ? " current" : ""}`;
    card.dataset.name = entry.name;
    const img = document.createElement("img");
    img.alt = entry.name;
    const label = document.createElement("div");
    label.textContent = entry.name;
    const state = document.createElement("div");
    state.className = "hint";
    state.textContent = entry.state === "ready" ? "" : entry.error || `${entry.state}: ${entry.stage}`;
    card.append(img, label, state);
    if (entry.state === "ready") {
      thumbnail(entry.name, img).catch(() => {});
      const use = document.createElement("button");
      use.type = "button";
      use.textContent = entry.name === avatars.current ? "in use" : "use";
      use.disabled = entry.name === avatars.current;
      use.addEventListener("click", () => useAvatar(entry.name));
      card.append(use);
    }
    return card;
  }

  async function loadAvatars() {
    avatars = await api("/api/avatars");
    $("gallery").replaceChildren(...avatars.avatars.map(avatarCard));
    const ready = avatars.avatars.filter((a) => a.state === "ready").map((a) => a.name);
    for (const [id, selected] of [
      ["remote-avatar", $("remote-avatar").value || avatars.current],
      ["background-image", settings && settings.background ? settings.background.image : null],
    ]) {
      const select = $(id);
      select.replaceChildren(
        ...ready.map((name) => {
          const option = document.createElement("option");
          option.value = option.textContent = name;
          option.selected = name === selected;
          return option;
        }),
      );
    }
  }

  async function useAvatar(name) {
    say(`switching to ${name}…`);
    try {
      await api(`/api/avatars/${name}/use`, { method: "POST" });
      say(`the camera's avatar is now ${name}`);
      await loadAvatars();
    } catch (error) {
      fail(error);
    }
  }

  function upload(file, name) {
    const progress = $("upload-progress");
    const state = $("upload-state");
    progress.hidden = false;
    progress.value = 0;
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("PUT", `/api/avatars/${encodeURIComponent(name)}`);
      for (const [key, value] of Object.entries(authHeaders())) xhr.setRequestHeader(key, value);
      xhr.setRequestHeader("Content-Type", file.type || "application/octet-stream");
      xhr.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) {
          progress.value = 0.25 * (event.loaded / event.total);
          state.textContent = `uploading ${Math.round((100 * event.loaded) / event.total)}%`;
        }
      });
      xhr.addEventListener("load", () => {
        const body = JSON.parse(xhr.responseText || "{}");
        if (xhr.status >= 400) return reject(new ApiError(xhr.status, body));
        resolve(body);
      });
      xhr.addEventListener("error", () => reject(new Error("upload failed: connection lost")));
      xhr.send(file);
    });
  }

  async function followPreparation(name) {
    const progress = $("upload-progress");
    const state = $("upload-state");
    for (;;) {
      await loadAvatars();
      const entry = avatars.avatars.find((a) => a.name === name);
      if (!entry) return;
      progress.value = entry.progress;
      if (entry.state === "ready") {
        thumbs.delete(name); // a replaced image gets a new thumbnail
        await loadAvatars();
        state.textContent = `${name} is ready`;
        progress.hidden = true;
        return;
      }
      if (entry.state === "failed") {
        state.textContent = `${name}: ${entry.error}`;
        progress.hidden = true;
        return;
      }
      state.textContent = `preparing ${name}: ${entry.stage}`;
      await new Promise((r) => setTimeout(r, 500));
    }
  }

  // ---------------------------------------------------------------- settings

  let pendingPatch = {};
  let patchTimer = null;

  function patchSettings(patch) {
    // merge, then send once the user pauses (sliders fire many input events)
    for (const [section, values] of Object.entries(patch)) {
      pendingPatch[section] = pendingPatch[section] || {};
      for (const [key, value] of Object.entries(values)) {
        if (value && typeof value === "object") {
          pendingPatch[section][key] = { ...(pendingPatch[section][key] || {}), ...value };
        } else {
          pendingPatch[section][key] = value;
        }
      }
    }
    clearTimeout(patchTimer);
    return new Promise((resolve) => {
      patchTimer = setTimeout(async () => {
        const body = pendingPatch;
        pendingPatch = {};
        try {
          settings = await api("/api/settings", { method: "PATCH", body });
          say(`applied: ${settings.changed.join(", ") || "no change"}`);
        } catch (error) {
          fail(error);
          await loadSettings();
        }
        resolve(settings);
      }, 120);
    });
  }

  function renderSliders() {
    let group = null;
    const nodes = [];
    for (const s of settings.sliders) {
      if (s.group !== group) {
        group = s.group;
        const title = document.createElement("div");
        title.className = "group";
        title.textContent = group;
        nodes.push(title);
      }
      const row = document.createElement("label");
      row.className = "slider";
      row.title = s.description;
      const name = document.createElement("span");
      name.textContent = s.name;
      const input = document.createElement("input");
      Object.assign(input, { type: "range", min: s.min, max: s.max, step: s.step, value: s.value });
      input.dataset.key = s.key;
      const out = document.createElement("output");
      out.textContent = s.value;
      input.addEventListener("input", () => {
        out.textContent = input.value;
        patchSettings({ motion: { [s.group]: { [s.name]: Number(input.value) } } });
      });
      row.append(name, input, out);
      nodes.push(row);
    }
    $("sliders").replaceChildren(...nodes);
  }

  function renderBackground() {
    const bg = settings.background;
    const select = $("background");
    for (const id of ["background", "background-color", "background-image"]) $(id).disabled = !bg;
    if (!bg) return;
    select.replaceChildren(
      ...bg.choices.map((choice) => {
        const option = document.createElement("option");
        option.value = option.textContent = choice;
        option.selected = choice === bg.value;
        return option;
      }),
    );
    $("background-color").value = bg.color;
    $("background-color").hidden = bg.value !== "color";
    $("background-image").hidden = bg.value !== "image";
  }

  async function loadSettings() {
    settings = await api("/api/settings");
    renderSliders();
    renderBackground();
    $("settings-note").textContent = settings.note;
  }

  function backgroundPatch() {
    const patch = { background: $("background").value };
    if (patch.background === "color") patch.background_color = $("background-color").value;
    if (patch.background === "image") patch.background_image = $("background-image").value;
    return { generator: patch };
  }

  // ---------------------------------------------------------------- wiring

  function wire() {
    $("calibrate").addEventListener("click", async () => {
      try {
        say((await api("/api/calibrate", { method: "POST" })).message);
      } catch (error) {
        fail(error);
      }
    });
    for (const id of ["background", "background-color", "background-image"]) {
      $(id).addEventListener("change", async () => {
        if ($("background").value === "image" && !$("background-image").value) return;
        await patchSettings(backgroundPatch());
        renderBackground();
      });
    }
    $("upload-file").addEventListener("change", () => {
      const file = $("upload-file").files[0];
      if (file && !$("upload-name").value) {
        $("upload-name").value = file.name.replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9_-]+/g, "-").replace(/^[-_]+/, "").slice(0, 48);
      }
    });
    $("upload").addEventListener("submit", async (event) => {
      event.preventDefault();
      const name = $("upload-name").value;
      try {
        await upload($("upload-file").files[0], name);
        await followPreparation(name);
      } catch (error) {
        $("upload-progress").hidden = true;
        $("upload-state").textContent = "";
        fail(error);
      }
    });
    $("remote-start").addEventListener("click", async () => {
      try {
        const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
        await startRemote(stream, $("remote-avatar").value || null);
      } catch (error) {
        fail(error);
      }
    });
    $("remote-stop").addEventListener("click", () => stopRemote());
    window.addEventListener("pagehide", () => {
      for (const id of [...sessions.keys()]) disconnect(id);
    });
  }

  async function main() {
    wire();
    await pollStatus();
    setInterval(pollStatus, 1000);
    await Promise.all([loadSettings(), loadAvatars()]);
    await startPreview();
  }

  const ready = main().catch(fail);
  return { api, connect, disconnect, startPreview, startRemote, stopRemote, patchSettings, sessions, ready };
})();

window.THC = THC;
