// firstword voice-assistant demo: a protocol v1 client that plays through an AudioWorklet.
//
// Flow of one utterance: Speak -> (AudioContext + worklet on first use) -> start, text..., end
// -> ready, segment, binary frames..., done. Frames are pcm_f32le at the AudioContext's own
// rate, so they go to the worklet untouched. Stop sends cancel and clears the worklet at
// once; frames still in flight are dropped until the matching `cancelled` arrives.
// See docs/web.md (page) and docs/protocol.md (wire protocol).

const params = new URLSearchParams(location.search);
const FORMAT = "pcm_f32le";
const FRAME_MS = 20;
const PREBUFFER_MS = Math.min(1000, Math.max(0, Number(params.get("prebuffer_ms") ?? 60) || 0));
const MIN_RATE = 8000;
const MAX_RATE = 48000;
const CONNECT_TIMEOUT_MS = 5000;
// One `text` message holds at most 10 000 characters (the server's --max-text-chars
// default) and 64 KiB; a longer text goes out in pieces, up to the utterance limit.
const TEXT_PIECE_CHARS = 4000;
const RESUME_TIMEOUT_MS = 3000;
const SPEEDS = [0.75, 0.9, 1, 1.1, 1.25, 1.5];

const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const ui = {
  text: $("text"),
  speak: $("speak"),
  stop: $("stop"),
  voice: $("voice"),
  speed: $("speed"),
  tokens: $("tokens"),
  rate: $("rate"),
  status: $("status"),
  statusBox: document.querySelector(".status"),
  ttft: $("ttft"),
  ttfa: $("ttfa"),
  clickToSound: $("click-to-sound"),
  audioMs: $("audio-ms"),
  rtf: $("rtf"),
  underruns: $("underruns"),
  heard: $("heard"),
  transcript: $("transcript"),
  detail: $("detail"),
  meter: $("meter"),
};

// ------------------------------------------------------------------ stats for tests
/** Figures of the current (or last) utterance; read-only to the outside as window.firstword. */
const stats = {
  state: "connecting", // connecting | ready | speaking | done | stopped | error | offline
  connected: false,
  sampleRate: null,
  utterances: 0,
  framesReceived: 0,
  bytesReceived: 0,
  samplesPlayed: 0,
  samplesBuffered: 0,
  underruns: 0,
  underrunsAtMs: [], // where in the audio playback ran dry
  segments: 0,
  audioMs: null, // from done.metrics.audio_ms
  ttftMs: null, // from done.metrics.ttft_ms
  ttfaFromFirstTextMs: null,
  rtf: null,
  clickToSoundMs: null, // click -> first sample out of the worklet (page clock)
  audioSentMs: null, // from cancelled.audio_sent_ms
  heardMs: null, // played by the worklet when stopped
  spokenText: null,
  unspokenText: null,
  lastError: null,
};
const view = {};
for (const key of Object.keys(stats)) {
  Object.defineProperty(view, key, { get: () => stats[key], enumerable: true });
}
Object.defineProperty(window, "firstword", { value: Object.freeze(view), enumerable: true });

// ------------------------------------------------------------------ small helpers
const clamp = (x, lo, hi) => Math.min(hi, Math.max(lo, x));
const fmtMs = (ms) => (ms == null ? "–" : String(Math.round(ms * 10) / 10));
const samplesToMs = (n) => (stats.sampleRate ? (1000 * n) / stats.sampleRate : 0);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function setStatus(state, words) {
  stats.state = state;
  ui.status.textContent = words ?? state;
  ui.statusBox.dataset.state = state;
  ui.stop.disabled = state !== "speaking";
  if (state === "speaking") wakeMeter();
}

function resetStats() {
  Object.assign(stats, {
    framesReceived: 0,
    bytesReceived: 0,
    samplesPlayed: 0,
    samplesBuffered: 0,
    underruns: 0,
    underrunsAtMs: [],
    segments: 0,
    audioMs: null,
    ttftMs: null,
    ttfaFromFirstTextMs: null,
    rtf: null,
    clickToSoundMs: null,
    audioSentMs: null,
    heardMs: null,
    spokenText: null,
    unspokenText: null,
    lastError: null,
  });
  renderMetrics();
}

function renderMetrics() {
  ui.ttft.textContent = fmtMs(stats.ttftMs);
  ui.ttfa.textContent = fmtMs(stats.ttfaFromFirstTextMs);
  ui.clickToSound.textContent = fmtMs(stats.clickToSoundMs);
  ui.audioMs.textContent = fmtMs(stats.audioMs);
  ui.rtf.textContent = stats.rtf == null ? "–" : stats.rtf.toFixed(3);
  ui.underruns.textContent = String(stats.underruns);
  const played = stats.samplesPlayed ? Math.round(samplesToMs(stats.samplesPlayed)) : null;
  ui.heard.textContent = fmtMs(stats.heardMs == null ? played : Math.round(stats.heardMs));
}

// ------------------------------------------------------------------ audio
let audioPromise = null;

/** The player worklet's code, fetched with the page, so that Speak needs no download
 * (with the server gone, addModule() of the URL failed with a network error instead
 * of the page saying that the server cannot be reached). Falls back to the URL. */
const WORKLET_URL = new URL("player-worklet.js", import.meta.url);
const workletSource = fetch(WORKLET_URL)
  .then((r) => (r.ok ? r.text() : Promise.reject(new Error(`HTTP ${r.status}`))))
  .then((code) => URL.createObjectURL(new Blob([code], { type: "text/javascript" })))
  .catch(() => WORKLET_URL);

/** The AudioContext, worklet node and analyser; created on the first Speak (a user gesture). */
function ensureAudio() {
  audioPromise ??= (async () => {
    let ctx = new AudioContext({ latencyHint: "interactive" });
    if (ctx.sampleRate < MIN_RATE || ctx.sampleRate > MAX_RATE) {
      // The server speaks 8-48 kHz; ask the browser for a rate in range instead of resampling.
      const wanted = clamp(Math.round(ctx.sampleRate), MIN_RATE, MAX_RATE);
      await ctx.close();
      ctx = new AudioContext({ latencyHint: "interactive", sampleRate: wanted });
    }
    await ctx.audioWorklet.addModule(await workletSource);
    const node = new AudioWorkletNode(ctx, "firstword-player", {
      numberOfInputs: 0,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { prebufferMs: PREBUFFER_MS, capacitySeconds: 30, reportMs: 50 },
    });
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 2048;
    node.connect(analyser).connect(ctx.destination);
    node.port.onmessage = (event) => onPlayer(event.data);
    stats.sampleRate = Math.round(ctx.sampleRate);
    startMeter(analyser);
    return { ctx, node, analyser };
  })();
  audioPromise.catch(() => {
    audioPromise = null; // let the next click try again
  });
  return audioPromise;
}

/** Resume `ctx` (autoplay rules); fails in plain words if the browser gives it no output. */
async function resumeAudio(ctx) {
  if (ctx.state === "running") return;
  // resume() never settles when there is no audio device (e.g. headless Firefox without one).
  await Promise.race([ctx.resume(), sleep(RESUME_TIMEOUT_MS)]);
  if (ctx.state !== "running") {
    throw new Error(`no audio output: the browser keeps the AudioContext ${ctx.state}`);
  }
}

/** performance.now() time at which audio-clock time `contextTime` reaches the speakers. */
function outputTimeOf(ctx, contextTime) {
  const stamp = ctx.getOutputTimestamp?.();
  if (!stamp || !stamp.performanceTime) return performance.now();
  return stamp.performanceTime + (contextTime - stamp.contextTime) * 1000;
}

// ------------------------------------------------------------------ connection
const wsUrl = new URL("v1/tts", location.href);
wsUrl.protocol = location.protocol === "https:" ? "wss:" : "ws:";
if (params.get("token")) wsUrl.searchParams.set("token", params.get("token"));

let ws = null;
let retries = 0;
let retryTimer = null;
let openWaiters = [];
/** Cancels sent and not yet answered, oldest first; each entry is the utterance it stopped. */
let pendingCancels = [];

function connect() {
  clearTimeout(retryTimer);
  retryTimer = null;
  if (ws && ws.readyState <= WebSocket.OPEN) return;
  if (!utterance?.active && !["error", "connecting"].includes(stats.state)) {
    setStatus("connecting", "connecting…");
  }
  const socket = new WebSocket(wsUrl);
  socket.binaryType = "arraybuffer";
  ws = socket;
  let opened = false;
  socket.onopen = () => {
    opened = true;
    // The backoff restarts only once this socket has proved usable (a message, or 2 s
    // open): a full server (1013) accepts the connection and closes it at once, and
    // resetting on open retried it every 0.5 s for ever.
    const proven = setTimeout(() => (retries = 0), 2000);
    socket.addEventListener("message", () => (retries = 0), { once: true });
    socket.addEventListener("close", () => clearTimeout(proven), { once: true });
    stats.connected = true;
    if (!utterance?.active) setStatus("ready", "ready");
    for (const resolve of openWaiters) resolve();
    openWaiters = [];
  };
  socket.onmessage = (event) => {
    if (typeof event.data === "string") onJson(JSON.parse(event.data));
    else onFrame(event.data);
  };
  socket.onclose = (event) => {
    if (ws !== socket) return;
    stats.connected = false;
    pendingCancels = [];
    const why = event.reason || (event.code === 1006 ? "connection lost" : `code ${event.code}`);
    // After `done` every frame is here: the buffered audio plays out whatever the socket does.
    // An utterance still waiting in whenOpen() keeps waiting: the retry below may open.
    if (utterance?.active && !utterance.serverDone && !utterance.waitingForSocket) {
      failUtterance(opened ? `connection closed (${why})` : "could not connect to the server");
    }
    if (event.code === 1000) {
      // A clean close (idle timeout): reconnect when the user speaks next.
      if (!utterance?.active) setStatus("offline", `disconnected (${why}); Speak reconnects`);
      return;
    }
    const delay = Math.min(10_000, 500 * 2 ** retries);
    retries += 1;
    if (stats.state !== "error" && !utterance?.active) {
      setStatus("connecting", `${why}; reconnecting in ${Math.round(delay / 100) / 10} s`);
    }
    retryTimer = setTimeout(connect, delay);
  };
}

/** Resolves once the socket is open (connecting if needed); rejects after timeoutMs. */
function whenOpen(timeoutMs) {
  if (ws?.readyState === WebSocket.OPEN) return Promise.resolve();
  connect();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("could not connect to the server")), timeoutMs);
    openWaiters.push(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

function send(message) {
  if (ws?.readyState !== WebSocket.OPEN) return false;
  ws.send(JSON.stringify(message));
  return true;
}

// ------------------------------------------------------------------ utterances
let utterance = null; // the current or last utterance
let nextId = 1;

function newUtterance(clickAt, text) {
  return {
    id: nextId++,
    clickAt,
    text,
    active: true, // until done+drained, stopped or failed
    serverDone: false,
    drained: false,
    stopped: false,
    segments: [], // {index, text, offsetMs, el}
    tokenTimer: null,
    tokensSent: 0,
    tokensTotal: 0,
    waitingForSocket: false, // in whenOpen(): a failed attempt is retried, not an error yet
  };
}

async function speak() {
  const clickAt = performance.now();
  const text = ui.text.value.trim();
  if (!text) {
    ui.text.focus();
    setStatus(stats.state, "type something to say first");
    return;
  }
  if (utterance?.active) stop(); // speaking over the assistant: barge in with the new text
  const u = newUtterance(clickAt, text);
  utterance = u;
  resetStats();
  stats.utterances += 1;
  renderTranscript(u);
  setStatus("speaking", "preparing audio…");
  let audio;
  try {
    audio = await ensureAudio();
    await resumeAudio(audio.ctx);
    u.waitingForSocket = true;
    await whenOpen(CONNECT_TIMEOUT_MS);
  } catch (err) {
    if (utterance === u && u.active) failUtterance(err.message || String(err)); // once
    return;
  }
  u.waitingForSocket = false;
  if (utterance !== u || !u.active) return; // stopped or replaced while we waited
  audio.node.port.postMessage({ type: "begin", id: u.id });
  setStatus("speaking", "speaking");
  send({
    type: "start",
    voice: ui.voice.value || undefined,
    format: FORMAT,
    sample_rate: clamp(stats.sampleRate, MIN_RATE, MAX_RATE),
    frame_ms: FRAME_MS,
    speed: Number(ui.speed.value) || 1,
  });
  if (ui.tokens.checked) {
    streamTokens(u, text, clamp(Number(ui.rate.value) || 8, 1, 50));
  } else {
    for (const piece of pieces(text, TEXT_PIECE_CHARS)) send({ type: "text", text: piece });
    send({ type: "end" });
  }
}

/** `text` cut into pieces of at most `max` UTF-16 units, never inside a surrogate pair. */
function pieces(text, max) {
  const out = [];
  for (let start = 0; start < text.length; ) {
    let end = Math.min(text.length, start + max);
    const last = text.charCodeAt(end - 1);
    if (end < text.length && last >= 0xd800 && last <= 0xdbff) end -= 1; // keep the pair whole
    out.push(text.slice(start, end));
    start = end;
  }
  return out;
}

/** Send `text` a word at a time, `wordsPerSecond`, like an LLM's token stream; then end. */
function streamTokens(u, text, wordsPerSecond) {
  const tokens = text.match(/\s*\S+/g) ?? [];
  const t0 = performance.now();
  u.tokensTotal = tokens.length;
  const step = () => {
    u.tokenTimer = null;
    if (utterance !== u || !u.active) return;
    if (u.tokensSent < tokens.length) {
      send({ type: "text", text: tokens[u.tokensSent] });
      u.tokensSent += 1;
      renderDetail(u);
      const due = t0 + (u.tokensSent * 1000) / wordsPerSecond;
      u.tokenTimer = setTimeout(step, Math.max(0, due - performance.now()));
    } else {
      send({ type: "end" });
    }
  };
  step();
}

/** Barge-in: cancel on the server, silence the worklet now, report how much was heard. */
function stop() {
  const u = utterance;
  if (!u?.active) return;
  clearTimeout(u.tokenTimer);
  u.active = false;
  u.stopped = true;
  if (send({ type: "cancel" })) pendingCancels.push(u);
  audioPromise?.then((a) => a.node.port.postMessage({ type: "clear" }));
  setStatus("stopped", "stopped");
  renderStopped(u);
}

function failUtterance(message) {
  const u = utterance;
  stats.lastError = message;
  if (u?.active) {
    clearTimeout(u.tokenTimer);
    u.active = false;
    if (send({ type: "cancel" })) pendingCancels.push(null);
    audioPromise?.then((a) => a.node.port.postMessage({ type: "clear" }));
  }
  setStatus("error", `error: ${message}`);
}

function finishIfComplete(u) {
  if (!u.active || !u.serverDone || !u.drained) return;
  u.active = false;
  // The socket may have closed while the last audio played out (a server restart).
  setStatus("done", stats.connected ? "done" : "done · disconnected; reconnecting");
  renderHighlight(u, Infinity);
}

function onJson(msg) {
  if (pendingCancels.length > 0) {
    // Everything before `cancelled` belongs to the utterance we stopped.
    if (msg.type === "cancelled") onCancelled(pendingCancels.shift(), msg);
    return;
  }
  const u = utterance;
  switch (msg.type) {
    case "ready":
      if (!u?.active) return;
      if (msg.format !== FORMAT || msg.sample_rate !== stats.sampleRate) {
        failUtterance(`server offers ${msg.format} at ${msg.sample_rate} Hz, not what was asked`);
      }
      return;
    case "segment":
      if (!u?.active) return;
      addSegment(u, msg);
      return;
    case "done":
      if (!u?.active) return;
      u.serverDone = true;
      stats.audioMs = msg.metrics.audio_ms;
      stats.ttftMs = msg.metrics.ttft_ms;
      stats.ttfaFromFirstTextMs = msg.metrics.ttfa_from_first_text_ms;
      stats.rtf = msg.metrics.rtf;
      renderMetrics();
      audioPromise?.then((a) => a.node.port.postMessage({ type: "end" }));
      finishIfComplete(u);
      return;
    case "cancelled":
      return; // not ours (nothing pending)
    case "error":
      onServerError(u, msg);
      return;
    default:
      return;
  }
}

function onServerError(u, msg) {
  if (msg.code === "synthesis_failed" && u?.active) {
    // One segment failed; the rest of the utterance goes on.
    stats.lastError = msg.message;
    ui.detail.textContent = `could not speak: “${shortened(msg.unspoken_text ?? "")}” (${msg.message})`;
    return;
  }
  if (u?.active) failUtterance(msg.message);
  else setStatus("error", `error: ${msg.message}`);
}

function onCancelled(u, msg) {
  // A cancel we sent after an error, or one that stopped an utterance already replaced by
  // the next (Speak over Speak): its figures are not the current utterance's.
  if (!u || utterance !== u) return;
  stats.audioSentMs = msg.audio_sent_ms;
  stats.spokenText = msg.spoken_text;
  stats.unspokenText = msg.unspoken_text;
  renderStopped(u);
}

/** ``text`` cut to ``max`` characters (whole code points) with an ellipsis in the middle. */
function shortened(text, max = 200) {
  const points = Array.from(text);
  if (points.length <= max) return text;
  const half = Math.floor((max - 1) / 2);
  return `${points.slice(0, half).join("")}…${points.slice(points.length - half).join("")}`;
}

function onFrame(buffer) {
  const u = utterance;
  if (pendingCancels.length > 0 || !u?.active) return; // the tail of a cancelled utterance
  if (buffer.byteLength % 4 !== 0) {
    failUtterance(`a ${buffer.byteLength}-byte frame is not whole float32 samples`);
    return;
  }
  stats.framesReceived += 1;
  stats.bytesReceived += buffer.byteLength;
  const samples = new Float32Array(buffer);
  audioPromise.then((a) => a.node.port.postMessage({ type: "frame", samples }, [buffer]));
}

function onPlayer(msg) {
  const u = utterance;
  if (!u || msg.id !== u.id) return;
  if (msg.type !== "cleared" && !u.active && !u.serverDone) return;
  stats.samplesPlayed = msg.played;
  stats.samplesBuffered = msg.buffered;
  stats.underruns = msg.underruns;
  if (msg.underrunAt !== undefined) {
    stats.underrunsAtMs.push(Math.round(samplesToMs(msg.underrunAt)));
  }
  renderMetrics();
  if (!u.stopped) renderDetail(u);
  renderHighlight(u, samplesToMs(msg.played));
  switch (msg.type) {
    case "started":
      audioPromise.then((a) => {
        stats.clickToSoundMs = outputTimeOf(a.ctx, msg.contextTime) - u.clickAt;
        renderMetrics();
      });
      return;
    case "drained":
      u.drained = true;
      finishIfComplete(u);
      return;
    case "cleared":
      stats.heardMs = samplesToMs(msg.played);
      renderStopped(u);
      return;
    default:
      return;
  }
}

// ------------------------------------------------------------------ transcript view
function renderTranscript(u) {
  ui.transcript.replaceChildren();
  ui.transcript.classList.toggle("empty", true);
  renderDetail(u);
}

function addSegment(u, msg) {
  const el = document.createElement("span");
  el.className = "segment pending";
  el.textContent = msg.text;
  el.title = `segment ${msg.index} at ${fmtMs(msg.audio_offset_ms)} ms`;
  ui.transcript.classList.toggle("empty", false);
  if (u.segments.length > 0) ui.transcript.append(" ");
  ui.transcript.append(el);
  u.segments.push({ index: msg.index, text: msg.text, offsetMs: msg.audio_offset_ms, el });
  stats.segments = u.segments.length;
  renderDetail(u);
}

/** Mark segments heard / current / pending from the worklet's played time. */
function renderHighlight(u, playedMs) {
  const started = stats.samplesPlayed > 0;
  let current = -1;
  for (let i = 0; i < u.segments.length; i += 1) {
    if (started && u.segments[i].offsetMs <= playedMs) current = i;
  }
  const finished = playedMs === Infinity;
  u.segments.forEach((s, i) => {
    s.el.classList.toggle("spoken", i < current || (finished && i === current));
    s.el.classList.toggle("current", i === current && !finished && !u.stopped);
    s.el.classList.toggle("pending", i > current);
    s.el.classList.toggle("unheard", u.stopped && i > current);
  });
}

function renderDetail(u) {
  const parts = [];
  if (u.tokensTotal) parts.push(`words sent ${u.tokensSent}/${u.tokensTotal}`);
  if (u.segments.length) parts.push(`${u.segments.length} segment(s)`);
  if (stats.framesReceived) {
    parts.push(`${stats.framesReceived} frames, ${Math.round(stats.bytesReceived / 1024)} KiB`);
  }
  ui.detail.textContent = parts.join(" · ");
}

function renderStopped(u) {
  renderMetrics();
  renderHighlight(u, samplesToMs(stats.samplesPlayed));
  if (stats.state !== "stopped") return;
  const heard = stats.heardMs == null ? "…" : `${Math.round(stats.heardMs)} ms`;
  // After `done` the server answers a cancel with zeros: then all of audio_ms was sent.
  const sentMs = stats.audioSentMs ? stats.audioSentMs : stats.audioMs;
  const sent = sentMs == null ? "" : ` of ${Math.round(sentMs)} ms sent`;
  setStatus("stopped", `stopped: heard ${heard}${sent}`);
  const spoken = stats.spokenText ? `sent before the stop: “${shortened(stats.spokenText)}”` : "";
  const unspoken = stats.unspokenText
    ? ` · never spoken: “${shortened(stats.unspokenText)}”`
    : "";
  if (spoken || unspoken) ui.detail.textContent = spoken + unspoken;
}

// ------------------------------------------------------------------ level meter
// Drawn at about 25 fps and only while there is sound (plus a moment for the
// level to fall): a page that repaints at 60 fps steals CPU from a server on
// the same small machine and can itself delay the audio it shows.
const METER_INTERVAL_MS = 40;
const METER_POINTS = 256;
let wakeMeter = () => {};

function startMeter(analyser) {
  const canvas = ui.meter;
  const g = canvas.getContext("2d");
  const data = new Float32Array(1024);
  const style = getComputedStyle(document.documentElement);
  const wave = style.getPropertyValue("--accent").trim() || "#2563eb";
  const bar = style.getPropertyValue("--level").trim() || "#16a34a";
  let level = 0;
  let quietFrames = 0;
  let lastDraw = 0;
  let running = false;
  const draw = (now) => {
    if (now - lastDraw < METER_INTERVAL_MS) {
      requestAnimationFrame(draw);
      return;
    }
    lastDraw = now;
    const dpr = window.devicePixelRatio || 1;
    const w = Math.round(canvas.clientWidth * dpr);
    const h = Math.round(canvas.clientHeight * dpr);
    if (canvas.width !== w || canvas.height !== h) Object.assign(canvas, { width: w, height: h });
    analyser.getFloatTimeDomainData(data);
    let sum = 0;
    for (const x of data) sum += x * x;
    const rms = Math.sqrt(sum / data.length);
    const db = rms > 0 ? 20 * Math.log10(rms) : -100;
    level = Math.max(clamp((db + 60) / 60, 0, 1), level * 0.7); // fast attack, slower release
    if (level < 0.01) level = 0;
    g.clearRect(0, 0, w, h);
    g.fillStyle = bar;
    g.fillRect(0, h - 6 * dpr, w * level, 6 * dpr);
    g.strokeStyle = wave;
    g.lineWidth = 1.5 * dpr;
    g.beginPath();
    const mid = (h - 8 * dpr) / 2;
    const step = data.length / METER_POINTS;
    for (let i = 0; i < METER_POINTS; i += 1) {
      const x = (i / (METER_POINTS - 1)) * w;
      const y = mid - data[Math.floor(i * step)] * mid * 0.95;
      if (i === 0) g.moveTo(x, y);
      else g.lineTo(x, y);
    }
    g.stroke();
    quietFrames = level === 0 && stats.state !== "speaking" ? quietFrames + 1 : 0;
    running = quietFrames < 10;
    if (running) requestAnimationFrame(draw);
  };
  wakeMeter = () => {
    quietFrames = 0;
    if (!running) {
      running = true;
      requestAnimationFrame(draw);
    }
  };
  wakeMeter();
}

// ------------------------------------------------------------------ voices
async function loadVoices() {
  for (let attempt = 0; ; attempt += 1) {
    try {
      const res = await fetch("v1/voices", { cache: "no-store" });
      const body = await res.json();
      if (res.ok && body.voices.length > 0) {
        ui.voice.replaceChildren(
          ...body.voices.map((v) => {
            const option = new Option(v.name, v.name, false, v.name === body.default);
            option.title = `${v.language}, ${v.sample_rate} Hz, ${v.backend}`;
            return option;
          }),
        );
        ui.voice.disabled = false;
        return;
      }
    } catch {
      // the server is starting or unreachable: try again below
    }
    await sleep(Math.min(5000, 500 * 2 ** attempt));
  }
}

function fillSpeeds() {
  ui.speed.replaceChildren(...SPEEDS.map((s) => new Option(`${s}×`, String(s), false, s === 1)));
}

// ------------------------------------------------------------------ wiring
ui.speak.addEventListener("click", () => speak());
ui.stop.addEventListener("click", () => stop());
ui.tokens.addEventListener("change", () => {
  ui.rate.disabled = !ui.tokens.checked;
});
ui.text.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    speak();
  }
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape") stop();
});

// The first touch of the page is a user gesture too: set audio up then, not on the Speak click.
const warmUp = () => {
  ensureAudio()
    .then((a) => resumeAudio(a.ctx))
    .catch(() => {}); // Speak reports the problem in plain words
};
document.addEventListener("pointerdown", warmUp, { once: true, capture: true });
document.addEventListener("keydown", warmUp, { once: true, capture: true });

fillSpeeds();
ui.rate.disabled = !ui.tokens.checked;
setStatus("connecting", "connecting…");
renderMetrics();
loadVoices();
connect();
