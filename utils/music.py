"""Bach's four-part chorales as token grids, and Bach's own rules counted on any grid.

The chorales come from the ``music21`` package (PyPI, BSD licence), which ships them as
MusicXML inside the package: an offline source from a registry, no download. Each
chorale with exactly four parts becomes a grid of sixteenth-note time steps by four
voices (soprano, alto, tenor, bass), transposed to C major or A minor. A cell holds a
pitch token where a note starts, :data:`HOLD` where the voice's note goes on, or
:data:`REST`. Parsing is slow (about a tenth of a second a chorale), so the grids are
cached: one ``.npz`` file written atomically, whose content digest is checked before
use.

:func:`rule_counts` counts, the same way on real and generated grids, what harmony
textbooks forbid or expect: parallel fifths and octaves, voice crossings, notes outside
a voice's usual range, and sonorities that are triads or seventh chords.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from . import sources

VOICES = ("soprano", "alto", "tenor", "bass")
#: Time steps per quarter note: a sixteenth-note grid, the shortest value in the
#: chorales (an eighth-note grid would round about 3% of their notes).
STEPS_PER_QUARTER = 4
#: Tokens: a chorale boundary, a held note, a rest, then one per pitch.
END, HOLD, REST = 0, 1, 2
FIRST_PITCH = 3
#: The vocabulary's pitch range, MIDI numbers (E1 to E6): wider than any chorale's voice
#: after transposition to C major or A minor (the lowest bass note is G1, the highest
#: soprano note C6).
LOW, HIGH = 28, 88
VOCAB_SIZE = FIRST_PITCH + HIGH - LOW + 1
#: Beat positions: sixteenths since the bar line (a 3/2 bar has 24; the two longer
#: bars in the corpus are counted up to 31), and one for the boundary between chorales.
BEATS = 32
BEAT_END = BEATS
#: The usual range of each voice, MIDI numbers, as harmony textbooks give it (soprano
#: C4-G5, alto G3-D5, tenor C3-G4, bass E2-C4; e.g. Aldwell and Schachter, *Harmony and
#: Voice Leading*).
USUAL_RANGE = {
    "soprano": (60, 79),
    "alto": (55, 74),
    "tenor": (48, 67),
    "bass": (40, 60),
}
#: The cache format; a change of the encoding must change it.
FORMAT = "chorales-v1"

INSTALL = "pip install music21"


class MusicError(ValueError):
    """A chorale that cannot be encoded, or a grid that is not a chorale's."""


def music21():
    """The ``music21`` module, or an ImportError that gives the line to install it.

    Imported in a notebook, music21 starts a timer that, a second later, switches
    matplotlib's inline figures to 'retina' (twice the pixels) and to interactive mode.
    The timer is cancelled, and whatever it already changed is put back, so the book's
    figures keep their size."""
    import matplotlib

    interactive, formats = matplotlib.is_interactive(), _inline_formats()
    try:
        import music21 as m21
    except ImportError:
        raise ImportError(
            f"the music chapter reads Bach's chorales from the music21 package, which "
            f"is not installed: run `{INSTALL}` (in a notebook: `%pip install "
            "music21`), then restart the kernel"
        ) from None
    timer = getattr(getattr(m21, "ipython21", None), "t", None)
    if timer is not None and hasattr(timer, "cancel"):
        timer.cancel()
    matplotlib.interactive(interactive)
    if formats is not None and _inline_formats() != formats:
        from IPython import get_ipython

        get_ipython().run_line_magic(
            "config", f"InlineBackend.figure_formats = {sorted(formats)!r}"
        )
    return m21


def _inline_formats() -> set[str] | None:
    """The inline backend's figure formats in a running IPython kernel (its defaults
    until it is first configured), else None."""
    try:
        from IPython import get_ipython
        from matplotlib_inline.backend_inline import InlineBackend
    except ImportError:
        return None
    if get_ipython() is None:
        return None
    if not InlineBackend.initialized():  # not configured yet: matplotlib_inline's
        return {"png"}  # default formats
    return set(InlineBackend.instance().figure_formats)


def token_name(token: int) -> str:
    """A token as a reader reads it: ``END``, ``__`` (hold), ``rest`` or a pitch."""
    if token == END:
        return "END"
    if token == HOLD:
        return "__"
    if token == REST:
        return "rest"
    names = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
    midi = int(token) - FIRST_PITCH + LOW
    return f"{names[midi % 12]}{midi // 12 - 1}"


def pitch_token(midi: int, where: str = "a note") -> int:
    """The token of MIDI pitch ``midi``; a pitch outside the vocabulary is an error."""
    if not LOW <= midi <= HIGH:
        raise MusicError(
            f"{where} has MIDI pitch {midi}, outside the vocabulary's range "
            f"{LOW}..{HIGH} (E1 to E6)"
        )
    return FIRST_PITCH + midi - LOW


@dataclass
class Chorale:
    """One chorale: ``grid`` (T, 4) tokens, ``beat`` (T,) sixteenths since the bar
    line, its corpus ``name`` (e.g. ``bwv1.6``), and the semitones it was moved by."""

    name: str
    grid: np.ndarray
    beat: np.ndarray
    shift: int


def _steps(quarters, where: str) -> int:
    steps = Fraction(quarters).limit_denominator(64) * STEPS_PER_QUARTER
    if steps.denominator != 1:
        raise MusicError(
            f"{where} is off the sixteenth-note grid ({quarters} quarters)"
        )
    return int(steps)


def score_notes(score, shift: int = 0) -> list[tuple[int, int, int, int]]:
    """The notes of a four-part score as (voice, start, length, MIDI pitch), in
    sixteenth steps, tied notes merged and moved by ``shift`` semitones: what an
    encoding must keep. Grace notes (no duration) are left out."""
    parts = list(score.parts)
    if len(parts) != 4:
        raise MusicError(f"the score has {len(parts)} parts, not four")
    notes = []
    for voice, part in enumerate(parts):
        last = None
        for n in part.flatten().notesAndRests:
            if n.duration.quarterLength == 0 or n.isRest:
                continue
            where = f"{VOICES[voice]} note at quarter {n.offset}"
            start = _steps(n.offset, where)
            length = _steps(n.duration.quarterLength, where)
            midi = max(p.midi for p in n.pitches) + shift  # a chord: its top note
            tied = n.tie is not None and n.tie.type in ("stop", "continue")
            if (
                tied
                and last is not None
                and notes[last][1] + notes[last][2] == start
                and notes[last][3] == midi
            ):
                v, s, ln, m = notes[last]
                notes[last] = (v, s, ln + length, m)
                continue
            notes.append((voice, start, length, midi))
            last = len(notes) - 1
    return sorted(notes)


def _beats(score, steps: int) -> np.ndarray:
    """Sixteenths since the bar line at each step, from the top part's bars (a pickup
    bar, which lacks its opening beats, counts from where a whole bar would start)."""
    beat = np.zeros(steps, dtype=np.int8)
    for bar in score.parts[0].getElementsByClass("Measure"):
        start = _steps(bar.offset, "a bar line")
        length = _steps(bar.duration.quarterLength, "a bar")
        pad = _steps(bar.paddingLeft, "a pickup bar")
        stop = min(start + length, steps)
        beat[start:stop] = np.minimum(np.arange(stop - start) + pad, BEATS - 1)
    return beat


def encode(notes: Sequence[tuple[int, int, int, int]], steps: int) -> np.ndarray:
    """Notes (voice, start, length, MIDI pitch) -> the (steps, 4) token grid. Notes of
    one voice that overlap, or run past ``steps``, are an error."""
    grid = np.full((steps, 4), REST, dtype=np.int16)
    filled = np.zeros((steps, 4), dtype=bool)
    for voice, start, length, midi in notes:
        where = f"the {VOICES[voice]} note at step {start}"
        if length < 1 or start < 0 or start + length > steps:
            raise MusicError(f"{where} does not fit the grid of {steps} steps")
        if filled[start : start + length, voice].any():
            raise MusicError(f"{where} overlaps another note of its voice")
        grid[start, voice] = pitch_token(midi, where)
        grid[start + 1 : start + length, voice] = HOLD
        filled[start : start + length, voice] = True
    return grid


def decode(grid: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The token grid (T, 4) -> its notes (voice, start, length, MIDI pitch), sorted.
    A hold with no note before it is an error."""
    grid = check_grid(grid)
    notes = []
    for voice in range(4):
        current = None
        for t, token in enumerate(grid[:, voice].tolist()):
            if token == HOLD:
                if current is None:
                    raise MusicError(
                        f"the {VOICES[voice]} holds a note at step {t} that never "
                        "started"
                    )
                current[2] += 1
                continue
            if current is not None:
                notes.append(tuple(current))
                current = None
            if token >= FIRST_PITCH:
                current = [voice, t, 1, int(token) - FIRST_PITCH + LOW]
        if current is not None:
            notes.append(tuple(current))
    return sorted(notes)


def check_grid(grid) -> np.ndarray:
    """A (T, 4) integer grid of valid tokens without ``END``, or a clear error."""
    grid = np.asarray(grid)
    if (
        grid.ndim != 2
        or grid.shape[1] != 4
        or not np.issubdtype(grid.dtype, np.integer)
    ):
        raise MusicError(
            f"a chorale grid is (time steps, 4 voices) of integer tokens, got shape "
            f"{grid.shape} of {grid.dtype}"
        )
    bad = (grid < HOLD) | (grid >= VOCAB_SIZE)
    if bad.any():
        t, v = np.argwhere(bad)[0]
        raise MusicError(
            f"step {t} of the {VOICES[v]} holds token {grid[t, v]}, not a hold, a rest "
            f"or a pitch (tokens {HOLD}..{VOCAB_SIZE - 1})"
        )
    return grid


def to_score(grid: np.ndarray, quarter_seconds: float | None = None):
    """The grid as a four-part music21 score (for MusicXML or MIDI export)."""
    m21 = music21()
    score = m21.stream.Score()
    notes = decode(grid)
    for voice, name in enumerate(VOICES):
        part = m21.stream.Part(id=name)
        part.partName = name
        for _, start, length, midi in (n for n in notes if n[0] == voice):
            note = m21.note.Note(midi)
            note.duration.quarterLength = Fraction(length, STEPS_PER_QUARTER)
            part.insert(Fraction(start, STEPS_PER_QUARTER), note)
        score.insert(0, part)
    if quarter_seconds is not None:
        score.insert(0, m21.tempo.MetronomeMark(number=60 / quarter_seconds))
    return score


def parse(score, name: str) -> Chorale:
    """One music21 score -> a :class:`Chorale` moved to C major or A minor (by the
    smaller of the two shifts, up or down). A score that is not four voices on the
    sixteenth grid within the vocabulary's range is a :class:`MusicError`."""
    key = score.analyze("key")
    target = 0 if key.mode == "major" else 9  # C or A
    shift = (target - key.tonic.pitchClass) % 12
    shift = shift - 12 if shift > 6 else shift
    notes = score_notes(score, shift)
    steps = _steps(score.highestTime, "the chorale's end")
    try:
        grid = encode(notes, steps)
    except MusicError as err:
        raise MusicError(f"{name}: {err}") from None
    return Chorale(name, grid, _beats(score, steps), shift)


def _corpus_paths(limit: int | None) -> list[Path]:
    m21 = music21()
    # some chorales ship twice, as MusicXML and as Humdrum (.krn): one file per name,
    # the MusicXML one where there are two
    found: dict[str, Path] = {}
    for p in sorted(Path(p) for p in m21.corpus.getComposer("bach")):
        if _name(p) not in found or p.suffix == ".mxl":
            found[_name(p)] = p
    paths = sorted(found.values())
    if not paths:
        raise FileNotFoundError(
            "music21's corpus holds no Bach: reinstall it with `pip install --force-"
            "reinstall music21` (the chorales ship inside the package)"
        )
    return paths[:limit] if limit else paths


def _name(path: Path) -> str:
    return path.name.rsplit(".", 1)[0]  # bwv1.6.mxl -> bwv1.6


@dataclass
class Corpus:
    """The parsed chorales, and what was skipped and why."""

    chorales: list[Chorale]
    skipped: dict[str, str]
    music21_version: str


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        h.update(key.encode())
        h.update(np.ascontiguousarray(arrays[key]).tobytes())
    return h.hexdigest()


def _pack(corpus: Corpus) -> dict[str, np.ndarray]:
    lengths = np.array([len(c.grid) for c in corpus.chorales], dtype=np.int64)
    arrays = {
        "format": np.array(FORMAT),
        "version": np.array(corpus.music21_version),
        "names": np.array([c.name for c in corpus.chorales]),
        "lengths": lengths,
        "shifts": np.array([c.shift for c in corpus.chorales], dtype=np.int8),
        "grids": np.concatenate([c.grid for c in corpus.chorales]).astype(np.int16),
        "beats": np.concatenate([c.beat for c in corpus.chorales]).astype(np.int8),
        "skipped": np.array([f"{k}\t{v}" for k, v in corpus.skipped.items()] or [""]),
    }
    arrays["digest"] = np.array(_digest(arrays))
    return arrays


def _unpack(path: Path) -> Corpus:
    """The cached corpus at ``path``, checked: its format, its digest, and every grid.
    Anything else is a :class:`~utils.sources.BadFileError`."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:  # noqa: BLE001 -- any failure: not a readable cache
        raise sources.BadFileError(
            f"not a readable .npz ({type(exc).__name__})"
        ) from None
    digest = str(arrays.pop("digest", ""))
    if str(arrays.get("format", "")) != FORMAT or digest != _digest(arrays):
        raise sources.BadFileError("its format or content digest does not match")
    lengths = arrays["lengths"]
    if lengths.sum() != len(arrays["grids"]) or len(lengths) != len(arrays["names"]):
        raise sources.BadFileError("its lengths do not add up")
    check_grid(arrays["grids"])
    cuts = np.cumsum(lengths)[:-1]
    chorales = [
        Chorale(str(n), g, b, int(s))
        for n, g, b, s in zip(
            arrays["names"],
            np.split(arrays["grids"], cuts),
            np.split(arrays["beats"], cuts),
            arrays["shifts"],
        )
    ]
    skipped = dict(line.split("\t", 1) for line in arrays["skipped"].tolist() if line)
    return Corpus(chorales, skipped, str(arrays["version"]))


def chorales(limit: int | None = None, progress: bool = True) -> Corpus:
    """Every Bach work in music21's corpus that is a four-voice chorale (the first
    ``limit`` files, sorted by name, when given), parsed once and cached in the cache
    folder under a name that says which files and which music21 version. A damaged cache
    is parsed again; a score that is not four voices on the grid is skipped and named in
    :attr:`Corpus.skipped` with the reason."""
    m21 = music21()
    paths = _corpus_paths(limit)
    key = hashlib.sha256("\n".join(p.name for p in paths).encode()).hexdigest()[:12]
    path = sources.cache_dir() / "music" / f"{FORMAT}-{m21.__version__}-{key}.npz"
    if path.is_file():
        try:
            return _unpack(path)
        except sources.BadFileError as err:
            warnings.warn(
                f"the cached chorales {path.name} are unusable ({err}); parsing again",
                stacklevel=2,
            )
    from .training import progress as bar  # text, not a widget, in a headless run

    found, skipped, seen = [], {}, {}
    for p in bar(paths, desc="parsing chorales") if progress else paths:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # music21's notes on odd MusicXML
            score = m21.corpus.parse(str(p))
        try:
            chorale = parse(score, _name(p))
        except MusicError as err:
            skipped[_name(p)] = str(err).removeprefix(f"{_name(p)}: ")
            continue
        twin = seen.setdefault(chorale.grid.tobytes(), chorale.name)
        if twin != chorale.name:  # one chorale under two numbers: kept once
            skipped[chorale.name] = f"the same notes as {twin}"
        else:
            found.append(chorale)
    if not found:
        raise MusicError(f"none of the {len(paths)} files is a four-voice chorale")
    corpus = Corpus(found, skipped, m21.__version__)
    with sources.atomic_path(path) as tmp:
        buffer = io.BytesIO()
        np.savez(buffer, **_pack(corpus))
        tmp.write_bytes(buffer.getvalue())
    return corpus


def tune(chorale: Chorale, notes: int = 8) -> tuple[int, ...]:
    """The chorale's hymn tune, as the intervals between its first ``notes`` soprano
    notes: the same melody in another key or octave is the same tune. Bach harmonised
    many tunes several times."""
    pitches = [m for v, _, _, m in decode(chorale.grid) if v == 0][:notes]
    return tuple(b - a for a, b in zip(pitches, pitches[1:]))


def split(
    chorales_: Sequence[Chorale],
    fractions: tuple[float, float] = (0.1, 0.1),
    seed: int = 0,
) -> tuple[list[str], list[str], list[str]]:
    """Chorales -> the names of (train, validation, test), split by hymn tune
    (:func:`tune`), so that no tune is harmonised on both sides, reproducibly: a seeded
    permutation of the tunes fills the test part, then validation, to at least
    ``fractions`` = (validation, test) of the chorales each; the rest is for
    training."""
    groups: dict[tuple, list[str]] = {}
    for c in sorted(chorales_, key=lambda c: c.name):
        groups.setdefault(tune(c), []).append(c.name)
    if len(groups) < 3:
        raise MusicError(f"{len(groups)} tunes cannot be split three ways")
    order = np.random.default_rng(seed).permutation(len(groups))
    tunes = list(groups.values())
    parts: list[list[str]] = [[], [], []]  # test, validation, train
    wanted = [max(1, round(f * len(chorales_))) for f in (fractions[1], fractions[0])]
    for i in order:
        part = next((k for k in (0, 1) if len(parts[k]) < wanted[k]), 2)
        parts[part] += tunes[i]
    if not parts[2]:
        raise MusicError(f"{len(chorales_)} chorales leave none for training")
    test, valid, train = (sorted(p) for p in parts)
    return train, valid, test


def stream(chorales_: Iterable[Chorale]) -> tuple[np.ndarray, np.ndarray]:
    """Chorales -> one token stream (N,) and its beats (N,): each chorale's grid read
    time step by time step (soprano, alto, tenor, bass), after one time step of
    ``END`` tokens that marks its start. Token i belongs to voice i % 4."""
    tokens, beats = [], []
    for c in chorales_:
        tokens += [np.full(4, END, dtype=np.int64), c.grid.reshape(-1).astype(np.int64)]
        beats += [
            np.full(4, BEAT_END, dtype=np.int64),
            np.repeat(c.beat, 4).astype(np.int64),
        ]
    return np.concatenate(tokens), np.concatenate(beats)


# --- Bach's rules ---------------------------------------------------------------------


def sounding(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The MIDI pitch sounding in each voice at each step (-1: a rest), (T, 4), and
    where a note starts, (T, 4) bool."""
    grid = check_grid(grid)
    onset = grid >= FIRST_PITCH
    pitch = np.where(onset, grid.astype(np.int64) - FIRST_PITCH + LOW, -1)
    for t in range(1, len(grid)):
        held = grid[t] == HOLD
        pitch[t, held] = pitch[t - 1, held]
    return pitch, onset


def _chord_shapes() -> set[frozenset[int]]:
    shapes = (
        (0, 4, 7),
        (0, 3, 7),
        (0, 3, 6),
        (0, 4, 8),  # major, minor, diminished, augmented
        (0, 4, 7, 10),
        (0, 4, 7, 11),
        (0, 3, 7, 10),
        (0, 3, 6, 10),
        (0, 3, 6, 9),
    )  # sevenths: dominant, major, minor, half-diminished, diminished
    return {
        frozenset((root + i) % 12 for i in shape)
        for shape in shapes
        for root in range(12)
    }


CHORDS = _chord_shapes()
RULES = (
    "parallel_fifths",
    "parallel_octaves",
    "similar_motion",
    "crossings",
    "out_of_range",
    "chords",
)


def rule_counts(grids: Iterable[np.ndarray]) -> dict[str, int]:
    """Counts over four-voice grids, summed: ``parallel_fifths`` and
    ``parallel_octaves`` (two voices a fifth, or an octave or unison, apart that both
    move the same way to the same interval again) out of ``steps`` (voice-leading
    steps: from one attack to the next, where any voice starts a note); ``crossings``
    (time steps where a voice sounds below the voice under it) and ``chords`` (time
    steps whose sounding pitch classes are a triad or a seventh chord) out of
    ``time_steps`` (those where at least three voices sound); ``out_of_range`` notes
    out of ``notes``; ``similar_motion``, pairs of voices that move the same way, out
    of ``steps`` (summed over the six pairs: the chances a parallel had). Crossings
    are counted between neighbouring voices; the chords are complete (a dominant
    seventh without its fifth is not one)."""
    total = dict.fromkeys((*RULES, "steps", "time_steps", "notes"), 0)
    for grid in grids:
        pitch, onset = sounding(grid)
        attacks = pitch[onset.any(axis=1)]  # the sonority at each attack, (K, 4)
        total["steps"] += max(len(attacks) - 1, 0)
        a, b = attacks[:-1], attacks[1:]
        for upper in range(4):
            for lower in range(upper + 1, 4):
                sound = (a[:, [upper, lower]] >= 0).all(1) & (
                    b[:, [upper, lower]] >= 0
                ).all(1)
                up, lo = b[:, upper] - a[:, upper], b[:, lower] - a[:, lower]
                same_way = (np.sign(up) == np.sign(lo)) & (up != 0)
                # the interval from the lower voice up; a crossed pair (below 0) is
                # not a fifth: a fifth inverted is a fourth
                before = a[:, upper] - a[:, lower]
                after = b[:, upper] - b[:, lower]
                moving = sound & same_way & (before >= 0) & (after >= 0)
                total["similar_motion"] += int((sound & same_way).sum())
                total["parallel_fifths"] += int(
                    (moving & (before % 12 == 7) & (after % 12 == 7)).sum()
                )
                total["parallel_octaves"] += int(
                    (moving & (before % 12 == 0) & (after % 12 == 0)).sum()
                )
        full = (pitch >= 0).sum(axis=1) >= 3
        total["time_steps"] += int(full.sum())
        crossed = np.zeros(len(pitch), dtype=bool)
        for v in range(3):
            both = (pitch[:, v] >= 0) & (pitch[:, v + 1] >= 0)
            crossed |= both & (pitch[:, v] < pitch[:, v + 1])
        total["crossings"] += int((crossed & full).sum())
        total["chords"] += sum(
            frozenset(int(p) % 12 for p in row if p >= 0) in CHORDS
            for row in pitch[full]
        )
        for v, name in enumerate(VOICES):
            low, high = USUAL_RANGE[name]
            started = pitch[onset[:, v], v]
            total["notes"] += len(started)
            total["out_of_range"] += int(((started < low) | (started > high)).sum())
    return total


def rule_rates(counts: dict[str, int]) -> dict[str, float]:
    """The counts of :func:`rule_counts` as rates: parallels and similar motion per 100
    voice-leading steps, crossings and chords per 100 time steps, notes out of range
    per 100 notes."""
    per = {
        "parallel_fifths": "steps",
        "parallel_octaves": "steps",
        "similar_motion": "steps",
        "crossings": "time_steps",
        "chords": "time_steps",
        "out_of_range": "notes",
    }
    return {k: 100 * counts[k] / max(counts[per[k]], 1) for k in RULES}
