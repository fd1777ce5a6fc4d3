"""Notes to sound, with numpy alone: additive synthesis and a small WAV file.

A note is a sum of a few harmonics of its fundamental under an envelope (a short attack,
an exponential decay, a short release so that it ends without a click). Each voice gets
its own mix of harmonics, so four voices stay apart to the ear. The result is written
as 8-bit PCM WAV at a low sample rate: every browser plays it, and a 20-second clip is
160 KB, small enough to store in a notebook. No synthesiser or sound font is needed.
"""

from __future__ import annotations

import io
import wave
from typing import Sequence

import numpy as np

#: Relative amplitudes of the harmonics 1, 2, 3, ... of each voice (soprano, alto,
#: tenor, bass): a flute-like soprano, reedier inner voices, a round bass.
TIMBRES = (
    (1.0, 0.25, 0.08),
    (1.0, 0.5, 0.3, 0.1),
    (1.0, 0.6, 0.4, 0.2, 0.1),
    (1.0, 0.7, 0.2, 0.15),
)
#: Samples per second: harmonics of the highest soprano notes (C6, 1,047 Hz) stay under
#: the 4,000 Hz limit (Nyquist) of 8,000 samples a second, or are dropped.
RATE = 8_000


def frequency(midi: float) -> float:
    """Hz of MIDI pitch ``midi`` in equal temperament, A4 (69) = 440 Hz."""
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def render(
    notes: Sequence[tuple[int, int, int, int]],
    step_seconds: float,
    rate: int = RATE,
    seconds: float | None = None,
) -> np.ndarray:
    """Notes (voice, start step, length in steps, MIDI pitch) -> a mono signal in
    [-1, 1], (samples,) float32, ``seconds`` long (the notes' own length when None;
    later notes are cut off)."""
    if not step_seconds > 0 or rate < 1_000:
        raise ValueError(
            f"step_seconds must be > 0 and rate >= 1000, got {step_seconds} and {rate}"
        )
    end = max((s + n for _, s, n, _ in notes), default=0) * step_seconds
    total = int(round((end if seconds is None else seconds) * rate))
    out = np.zeros(total + 1, dtype=np.float64)
    for voice, start, length, midi in notes:
        if not 0 <= voice < len(TIMBRES):
            raise ValueError(f"voice {voice} is not one of 0..{len(TIMBRES) - 1}")
        first = int(round(start * step_seconds * rate))
        if first >= total:
            continue
        n = min(int(round(length * step_seconds * rate)), total - first)
        t = np.arange(n) / rate
        f = frequency(midi)
        tone = sum(
            a * np.sin(2 * np.pi * k * f * t)
            for k, a in enumerate(TIMBRES[voice], start=1)
            if k * f < rate / 2  # above Nyquist a harmonic would alias
        )
        attack, release = min(0.01 * rate, n / 4), min(0.03 * rate, n / 4)
        envelope = np.exp(-1.5 * t) * np.minimum(1.0, np.arange(n) / max(attack, 1))
        envelope *= np.minimum(1.0, (n - np.arange(n)) / max(release, 1))
        out[first : first + n] += tone * envelope
    peak = np.abs(out).max()
    return (out / peak * 0.9 if peak > 0 else out).astype(np.float32)


def wav_bytes(signal: np.ndarray, rate: int = RATE) -> bytes:
    """A mono signal in [-1, 1] as the bytes of an 8-bit PCM WAV file."""
    signal = np.asarray(signal, dtype=np.float64)
    if signal.ndim != 1 or not np.isfinite(signal).all():
        raise ValueError(
            f"a mono signal is one finite row of samples, got {signal.shape}"
        )
    samples = np.clip(np.round(signal * 127 + 128), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(1)  # 8-bit WAV samples are unsigned, 128 is silence
        f.setframerate(rate)
        f.writeframes(samples.tobytes())
    return buffer.getvalue()
