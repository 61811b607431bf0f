// firstword player: an AudioWorklet that plays mono Float32 frames from a ring buffer.
//
// The main thread posts messages to `port`; all sample counts are at the
// AudioContext's rate (the page asks the server for exactly that rate, so
// nothing is resampled here).
//
//   {type: "begin", id}              new utterance: drop audio, reset counters, wait for prebuffer
//   {type: "frame", samples}         append a Float32Array (its buffer may be transferred)
//   {type: "end"}                    no more frames: play what is left, then report "drained"
//   {type: "clear"}                  stop now (short fade, no click), then report "cleared"
//   {type: "stats"}                  report "stats" at once
//
// It posts back, every message carrying the utterance `id` and the counters
// (`played` samples output, `buffered`, `underruns`, `dropped`, `mode`):
//
//   "started"  the first sample of the utterance went out, at audio time `contextTime` (s)
//   "stats"    periodically (about every `reportMs`) while active, on request, and on an
//              underrun (then with `underrunAt`: the played count where the gap is)
//   "drained"  after "end", once the last sample went out
//   "cleared"  after "clear", once the fade finished
//
// Modes: idle -> buffering -> playing -> (underrun: buffering again) -> drained;
// clear from any mode -> fading -> idle. Playback starts once `prebufferMs` of
// audio is buffered AND `prebufferMs` has passed since the first of it arrived:
// the server sends its first chunk the moment it exists and the next one about
// when the first would run out, so a burst larger than the prebuffer is no
// cushion by itself; the wait gives every later frame prebufferMs of slack.
// An underrun is output that had to be padded with silence before "end":
// playback then waits for the prebuffer again, so one hiccup costs one gap, not
// a crackle.

const RENDER_QUANTUM = 128;

class FirstwordPlayer extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions ?? {};
    this.prebuffer = Math.round((sampleRate * (opts.prebufferMs ?? 60)) / 1000);
    this.fadeSamples = Math.max(1, Math.round((sampleRate * (opts.fadeMs ?? 5)) / 1000));
    this.reportEvery = Math.max(
      1,
      Math.round((sampleRate * (opts.reportMs ?? 50)) / 1000 / RENDER_QUANTUM),
    );
    this.ring = new Float32Array(Math.ceil(sampleRate * (opts.capacitySeconds ?? 30)));
    this.readAt = 0;
    this.size = 0;
    this.id = null;
    this.mode = "idle";
    this.ended = false;
    this.started = false;
    this.played = 0;
    this.underruns = 0;
    this.dropped = 0;
    this.fadeTotal = 0;
    this.bufferingSince = null; // audio frame at which the first buffered sample arrived
    this.blocks = 0;
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(msg) {
    switch (msg.type) {
      case "begin":
        this.size = 0;
        this.id = msg.id;
        this.mode = "buffering";
        this.bufferingSince = null;
        this.ended = false;
        this.started = false;
        this.played = 0;
        this.underruns = 0;
        this.dropped = 0;
        break;
      case "frame":
        if (this.mode === "buffering" || this.mode === "playing") this.write(msg.samples);
        else this.dropped += msg.samples.length;
        break;
      case "end":
        this.ended = true;
        break;
      case "clear":
        if (this.mode === "playing") {
          this.size = Math.min(this.size, this.fadeSamples);
          this.fadeTotal = this.size;
          this.mode = this.size > 0 ? "fading" : "idle";
        } else {
          this.size = 0;
          this.mode = "idle";
        }
        if (this.mode === "idle") this.report("cleared");
        break;
      case "stats":
        this.report("stats");
        break;
      default:
        break;
    }
  }

  write(samples) {
    const free = this.ring.length - this.size;
    const count = Math.min(samples.length, free);
    this.dropped += samples.length - count; // only when the page outruns capacitySeconds
    const at = (this.readAt + this.size) % this.ring.length;
    const first = Math.min(count, this.ring.length - at);
    this.ring.set(samples.subarray(0, first), at);
    if (count > first) this.ring.set(samples.subarray(first, count), 0);
    this.size += count;
  }

  /** Copy up to out.length samples into out (rest silent); returns how many were real audio. */
  read(out) {
    const count = Math.min(out.length, this.size);
    const first = Math.min(count, this.ring.length - this.readAt);
    out.set(this.ring.subarray(this.readAt, this.readAt + first), 0);
    if (count > first) out.set(this.ring.subarray(0, count - first), first);
    out.fill(0, count);
    this.readAt = (this.readAt + count) % this.ring.length;
    this.size -= count;
    return count;
  }

  report(type, extra) {
    this.port.postMessage({
      type,
      id: this.id,
      played: this.played,
      buffered: this.size,
      underruns: this.underruns,
      dropped: this.dropped,
      mode: this.mode,
      ...extra,
    });
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    if (!out) return true;
    if (this.mode === "buffering") {
      if (this.size > 0 && this.bufferingSince === null) this.bufferingSince = currentFrame;
      const waited = this.bufferingSince === null ? 0 : currentFrame - this.bufferingSince;
      if (
        (this.size >= this.prebuffer && waited >= this.prebuffer) ||
        (this.ended && this.size > 0)
      ) {
        this.bufferingSince = null;
        this.mode = "playing";
        if (!this.started) {
          this.started = true;
          this.report("started", { contextTime: currentTime });
        }
      } else if (this.ended) {
        this.mode = "drained"; // an utterance without audio
        this.report("drained");
      }
    }
    if (this.mode === "playing") {
      const n = this.read(out);
      this.played += n;
      if (n < out.length && !this.ended) {
        this.underruns += 1;
        this.mode = "buffering";
        this.report("stats", { underrunAt: this.played });
      } else if (this.ended && this.size === 0) {
        this.mode = "drained";
        this.report("drained");
      }
    } else if (this.mode === "fading") {
      const left = this.size; // the fade ramps from 1 to 0 over fadeTotal samples
      const n = this.read(out);
      for (let i = 0; i < n; i += 1) out[i] *= (left - i) / (this.fadeTotal + 1);
      this.played += n;
      if (this.size === 0) {
        this.mode = "idle";
        this.report("cleared");
      }
    } else {
      out.fill(0);
    }
    this.blocks += 1;
    if (
      this.blocks % this.reportEvery === 0 &&
      (this.mode === "playing" || this.mode === "buffering")
    ) {
      this.report("stats");
    }
    return true;
  }
}

registerProcessor("firstword-player", FirstwordPlayer);
