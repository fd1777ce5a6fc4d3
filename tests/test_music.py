"""The music chapter's shared code: the chorale encoding and its round trip, the cache,
the split by tune, Bach's rules on grids whose answers are known, the n-gram baseline
against brute force, and the synthesiser's sound."""

import io
import math
import sys
import wave

import numpy as np
import pytest
import torch

from utils import audio, music, sources, text

pytest.importorskip("music21")


def grid_of(*voices: list[int]) -> np.ndarray:
    """A grid from four lists of MIDI pitches, one per voice, a quarter note (four
    steps) each."""
    grid = np.full((4 * len(voices[0]), 4), music.HOLD, dtype=np.int64)
    for v, pitches in enumerate(voices):
        for i, midi in enumerate(pitches):
            grid[4 * i, v] = music.pitch_token(midi)
    return grid


@pytest.fixture(scope="module")
def chorale_score():
    m21 = music.music21()
    return m21.corpus.parse("bwv10.7")


def test_a_chorale_survives_tokens_and_a_rebuilt_score(chorale_score):
    chorale = music.parse(chorale_score, "bwv10.7")
    notes = music.score_notes(chorale_score, chorale.shift)
    assert len(notes) > 100
    assert music.decode(chorale.grid) == notes
    rebuilt = music.to_score(chorale.grid)
    assert music.score_notes(rebuilt) == notes
    assert chorale.beat[0] == 0 and chorale.beat.max() == 15  # 4/4 from a downbeat
    # moved to C major or A minor: the key music21 finds in the result
    key = rebuilt.analyze("key")
    assert (key.tonic.name, key.mode) in (("C", "major"), ("A", "minor"))


def test_tied_notes_are_one_note():
    m21 = music.music21()
    score = m21.stream.Score()
    for v in range(4):
        part = m21.stream.Part()
        first, second = (
            m21.note.Note(72 - 7 * v, quarterLength=2),
            m21.note.Note(72 - 7 * v, quarterLength=1),
        )
        first.tie, second.tie = m21.tie.Tie("start"), m21.tie.Tie("stop")
        part.append([first, second, m21.note.Note(74 - 7 * v, quarterLength=1)])
        score.insert(0, part)
    notes = music.score_notes(score)
    assert [n for n in notes if n[0] == 0] == [(0, 0, 12, 72), (0, 12, 4, 74)]
    grid = music.encode(notes, 16)
    assert grid[0, 0] >= music.FIRST_PITCH and (grid[1:12, 0] == music.HOLD).all()


def test_bad_notes_and_grids_get_clear_errors():
    with pytest.raises(music.MusicError, match="outside the vocabulary"):
        music.encode([(0, 0, 4, 100)], 8)
    with pytest.raises(music.MusicError, match="overlaps"):
        music.encode([(1, 0, 4, 60), (1, 2, 4, 62)], 8)
    with pytest.raises(music.MusicError, match="does not fit"):
        music.encode([(2, 6, 4, 60)], 8)
    with pytest.raises(music.MusicError, match="never started"):
        music.decode(np.full((4, 4), music.HOLD))
    with pytest.raises(music.MusicError, match="not a hold"):
        music.decode(np.full((4, 4), music.END))
    with pytest.raises(music.MusicError, match="4 voices"):
        music.check_grid(np.zeros((8, 3), dtype=int))


def test_a_score_of_five_parts_is_refused():
    m21 = music.music21()
    score = m21.stream.Score()
    for _ in range(5):
        part = m21.stream.Part()
        part.append(m21.note.Note("C4", quarterLength=1))
        score.insert(0, part)
    with pytest.raises(music.MusicError, match="5 parts, not four"):
        music.parse(score, "five")


def test_a_missing_music21_names_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "music21", None)
    with pytest.raises(ImportError, match="pip install music21"):
        music.music21()


def test_the_cache_is_written_once_and_a_damaged_one_is_parsed_again(
    tmp_path, monkeypatch
):
    monkeypatch.setenv(sources.CACHE_DIR_ENV, str(tmp_path))
    first = music.chorales(limit=3, progress=False)
    (path,) = (tmp_path / "music").glob("*.npz")
    again = music.chorales(limit=3, progress=False)
    assert [c.name for c in again.chorales] == [c.name for c in first.chorales]
    assert all(
        (a.grid == b.grid).all() and (a.beat == b.beat).all()
        for a, b in zip(again.chorales, first.chorales)
    )
    payload = bytearray(path.read_bytes())
    payload[len(payload) // 2] ^= 0xFF  # one flipped byte
    path.write_bytes(bytes(payload))
    with pytest.warns(UserWarning, match="unusable"):
        repaired = music.chorales(limit=3, progress=False)
    assert [c.name for c in repaired.chorales] == [c.name for c in first.chorales]
    assert music._unpack(path).chorales[0].name == first.chorales[0].name
    # a whole, readable file whose notes were changed after its digest was taken
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["grids"] = arrays["grids"].copy()
    arrays["grids"][0, 0] = music.REST
    np.savez(path, **arrays)
    with pytest.raises(sources.BadFileError, match="digest"):
        music._unpack(path)


def _chorale(name: str, soprano: list[int]) -> music.Chorale:
    grid = grid_of(
        soprano, [55] * len(soprano), [48] * len(soprano), [36] * len(soprano)
    )
    return music.Chorale(name, grid, np.zeros(len(grid), dtype=np.int8), 0)


def test_the_split_keeps_every_tune_on_one_side():
    tunes = [[60 + i, 62, 64, 65, 67, 69, 71, 72] for i in range(12)]
    chorales = [
        _chorale(f"c{i}-{k}", tunes[i]) for i in range(12) for k in range(i % 3 + 1)
    ]
    train, valid, test = music.split(chorales, (0.2, 0.2))
    assert sorted(train + valid + test) == sorted(c.name for c in chorales)
    side = {name: k for k, part in enumerate((train, valid, test)) for name in part}
    for c in chorales:  # every harmonisation of a tune on the side of the first
        assert side[c.name] == side[c.name.split("-")[0] + "-0"]
    assert valid and test
    assert music.split(chorales, (0.2, 0.2)) == (train, valid, test)


def test_the_stream_marks_each_chorale_and_keeps_the_voices_in_place():
    a, b = _chorale("a", [60, 62]), _chorale("b", [64, 65, 67])
    tokens, beats = music.stream([a, b])
    assert len(tokens) == 4 * (1 + len(a.grid) + 1 + len(b.grid))
    assert (tokens[:4] == music.END).all() and (beats[:4] == music.BEAT_END).all()
    assert (tokens[4 : 4 + 4 * len(a.grid)].reshape(-1, 4) == a.grid).all()


def test_parallel_fifths_and_octaves_are_counted_and_contrary_motion_is_not():
    # soprano G4 -> A4 over bass C3 -> D3: a fifth (plus an octave) both times, both up
    parallel = grid_of([67, 69], [64, 65], [60, 60], [48, 50])
    counts = music.rule_counts([parallel])
    assert counts["steps"] == 1 and counts["parallel_fifths"] == 1
    assert counts["parallel_octaves"] == 0
    contrary = grid_of(
        [67, 62], [64, 65], [60, 60], [48, 55]
    )  # fifth -> fifth, opposite
    assert music.rule_counts([contrary])["parallel_fifths"] == 0
    octaves = grid_of([72, 74], [64, 65], [55, 57], [48, 50])  # S and B: octaves, up
    assert music.rule_counts([octaves])["parallel_octaves"] == 1
    # tenor G3 -> A3 under a bass C4 -> D4: crossed, a fourth (-5) both times
    crossed = grid_of([72, 72], [67, 67], [55, 57], [60, 62])
    counts = music.rule_counts([crossed])
    assert counts["parallel_fifths"] == 0 and counts["crossings"] == 8
    # similar motion: the pairs that move the same way, the chances a parallel had
    assert counts["similar_motion"] == 1 and counts["steps"] == 1
    assert music.rule_counts([parallel])["similar_motion"] == 3  # S-B, A-B, S-A


def test_a_tune_is_its_intervals_in_any_key():
    a, b = _chorale("a", [60, 62, 64, 65]), _chorale("b", [67, 69, 71, 72])
    assert music.tune(a) == music.tune(b) == (2, 2, 1)
    assert music.tune(_chorale("c", [60, 62, 64, 66])) != music.tune(a)


def test_crossings_ranges_and_chords_on_known_grids():
    c_major = grid_of([72], [64], [55], [48])  # C5 E4 G3 C3: a C major triad
    counts = music.rule_counts([c_major])
    assert counts["chords"] == counts["time_steps"] == 4
    assert counts["crossings"] == 0 and counts["out_of_range"] == 0
    crossed = grid_of([60], [67], [52], [42])  # alto above soprano; C G E F#: no chord
    counts = music.rule_counts([crossed])
    assert counts["crossings"] == 4 and counts["chords"] == 0
    high = grid_of([84], [64], [55], [48])  # soprano C6, above G5
    assert music.rule_counts([high])["out_of_range"] == 1
    rates = music.rule_rates(music.rule_counts([c_major, crossed]))
    assert rates["chords"] == 50 and rates["crossings"] == 50


def test_the_ngram_is_a_distribution_and_matches_its_counts():
    stream = [0, 1, 2, 1, 2, 3, 1, 2, 1]
    lam, vocab = 2.0, 5
    model = text.NGram(stream, 2, vocab, lam)
    for history in ([], [1], [2], [4], [0, 3]):
        p = model.distribution(history)
        assert p.sum().item() == pytest.approx(1.0)
        assert all(
            model.probability(history, w) == pytest.approx(p[w].item())
            for w in range(vocab)
        )
    # by hand: after 1 come 2, 2, 2 (and the stream's last 1 is followed by nothing)
    unigram = [
        (stream.count(w) + lam / vocab) / (len(stream) + lam) for w in range(vocab)
    ]
    assert model.probability([1], 2) == pytest.approx(
        (3 + lam * unigram[2]) / (3 + lam)
    )
    assert model.probability([4], 2) == pytest.approx(unigram[2])  # 4 never seen
    nll = -sum(
        math.log(model.probability(stream[i - 1 : i], stream[i])) for i in range(1, 9)
    )
    assert model.nll(stream) == pytest.approx(nll / 8)
    with pytest.raises(ValueError, match="outside"):
        text.NGram([0, 7], 2, vocab)


def test_a_synthesised_note_sounds_at_its_pitch_and_makes_a_wav_file():
    signal = audio.render([(0, 0, 8, 69)], step_seconds=0.125)  # A4 for one second
    assert abs(len(signal) - audio.RATE) <= 1 and np.abs(signal).max() <= 0.9 + 1e-6
    spectrum = np.abs(np.fft.rfft(signal))
    assert np.fft.rfftfreq(len(signal), 1 / audio.RATE)[
        spectrum.argmax()
    ] == pytest.approx(440, abs=2)
    payload = audio.wav_bytes(signal)
    with wave.open(io.BytesIO(payload)) as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate()) == (
            1,
            1,
            audio.RATE,
        )
        assert f.getnframes() == len(signal)
    with pytest.raises(ValueError, match="mono"):
        audio.wav_bytes(np.zeros((2, 10)))
    with pytest.raises(ValueError, match="voice"):
        audio.render([(7, 0, 4, 60)], 0.1)


def test_the_sampler_rules_leave_only_decodable_grids():
    """The two masks the chapter's sampler applies make any draw decodable: a grid of
    random tokens with holds only after notes decodes."""
    rng = torch.Generator().manual_seed(0)
    grid = torch.randint(music.HOLD, music.VOCAB_SIZE, (64, 4), generator=rng)
    grid[0] = music.REST
    for t in range(1, 64):
        no_note = grid[t - 1] == music.REST
        grid[t, no_note & (grid[t] == music.HOLD)] = music.REST
    assert len(music.decode(grid.numpy())) > 0
