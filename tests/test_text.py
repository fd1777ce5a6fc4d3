import math

import pytest
import torch

from utils import text


def test_vocabulary_round_trip_and_special_tokens():
    vocab = text.Vocabulary("hello world", specials=("<eos>",))
    assert vocab.itos[0] == "<eos>" and len(vocab) == 1 + len(set("hello world"))
    ids = vocab.encode(list("hello"))
    assert ids.dtype == torch.long and "".join(vocab.decode(ids)) == "hello"


def test_unknown_tokens_are_named_or_mapped_to_unk():
    chars = text.Vocabulary("abc")
    with pytest.raises(
        ValueError, match=r"2 token\(s\) not in the vocabulary of 3: 'x', 'é'"
    ):
        chars.encode(list("abxé"))
    words = text.Vocabulary("the cat sat".split(), unk="<unk>")
    assert words.decode(words.encode("the dog sat".split())) == ["the", "<unk>", "sat"]


def test_batchify_makes_contiguous_columns_and_drops_the_rest():
    # 26 tokens -> 6 rows x 4 columns, 2 dropped
    source = text.batchify(torch.arange(26), 4)
    assert source.shape == (6, 4)
    assert source[:, 0].tolist() == [0, 1, 2, 3, 4, 5] and source[:, 1].tolist() == [
        6,
        7,
        8,
        9,
        10,
        11,
    ]
    with pytest.raises(ValueError, match="cannot split 3 tokens into 4 columns"):
        text.batchify(torch.arange(3), 4)


def test_get_batch_shifts_targets_by_one_and_shortens_at_the_end():
    source = text.batchify(torch.arange(24), 2)  # 12 rows
    x, y = text.get_batch(source, 0, 5)
    assert x.shape == y.shape == (5, 2) and torch.equal(y[:-1], x[1:])
    x, y = text.get_batch(source, 10, 5)
    assert x.shape == (1, 2) and y[0].tolist() == [11, 23]
    with pytest.raises(ValueError, match="no batch starts at row 11"):
        text.get_batch(source, 11, 5)


def test_temperature_reshapes_the_distribution_and_must_be_positive():
    logits = torch.tensor([2.0, 1.0, 0.0])
    cold, warm = text.reweight(logits, 0.5), text.reweight(logits, 2.0)
    assert cold[0] > text.reweight(logits, 1.0)[0] > warm[0]
    assert torch.allclose(cold.sum(), torch.tensor(1.0))
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="temperature must be > 0"):
            text.sample(logits, bad)
    g = torch.Generator().manual_seed(0)
    draws = [text.sample(torch.tensor([0.0, 10.0, 0.0]), 1.0, g) for _ in range(20)]
    assert draws.count(1) >= 19


def _counting_model(vocab_size):
    """A fake model that always predicts the token after the last one (cyclically)."""

    def step(ids, state):
        logits = torch.full((len(ids), 1, vocab_size), -10.0)
        for t, i in enumerate(ids[:, 0].tolist()):
            logits[t, 0, (i + 1) % vocab_size] = 10.0
        return logits, state

    return step


def test_generate_greedy_and_sampled_and_bad_prompts():
    vocab = text.Vocabulary("abcd")
    step = _counting_model(len(vocab))
    assert text.generate(step, vocab, list("ab"), 5, greedy=True) == list("cdabc")
    assert text.generate(
        step,
        vocab,
        list("a"),
        3,
        temperature=0.5,
        generator=torch.Generator().manual_seed(1),
    ) == list("bcd")
    with pytest.raises(ValueError, match="the prompt is empty"):
        text.generate(step, vocab, [], 3)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        text.generate(step, vocab, list("az"), 3)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        text.generate(step, vocab, list("a"), 3, temperature=0.0)


def test_word_tokens_close_every_line_with_eos():
    assert text.word_tokens(["the cat sat", "", " a  dog "]) == [
        "the",
        "cat",
        "sat",
        "<eos>",
        "<eos>",
        "a",
        "dog",
        "<eos>",
    ]


def test_detach_state_keeps_values_and_cuts_the_graph():
    w = torch.ones(2, requires_grad=True)
    h, c = w * 2, w * 3
    assert text.detach_state(None) is None
    single = text.detach_state(h)
    pair = text.detach_state((h, c))
    assert not single.requires_grad and torch.equal(single, h)
    assert all(not s.requires_grad for s in pair) and torch.equal(pair[1], c)


class _Bigram(torch.nn.Module):
    """A model whose logits depend only on the current token: an exact cross-entropy to
    compare with."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table
        self.drop = torch.nn.Dropout(0.9)

    def forward(self, ids, state=None):
        return self.drop(self.table[ids]), state


def test_evaluate_is_the_mean_nats_per_token_in_eval_mode():
    torch.manual_seed(0)
    table = torch.randn(5, 5)
    stream = torch.randint(0, 5, (61,))
    source = text.batchify(stream, 3)  # (20, 3)
    model = _Bigram(table).train()
    expected = torch.nn.functional.cross_entropy(
        table[source[:-1]].flatten(0, 1), source[1:].flatten()
    ).item()
    # chunks of 7, 7, 5 rows; no dropout
    assert abs(text.evaluate(model, source, bptt=7) - expected) < 1e-5
    assert model.training  # the former mode is restored


def test_position_losses_by_chunk_position_with_state_carried_or_reset():
    torch.manual_seed(0)
    table = torch.randn(5, 5)
    # (20, 3): chunks of 7, 7, 5 rows
    source = text.batchify(torch.randint(0, 5, (61,)), 3)
    model = _Bigram(table).train()
    losses = torch.nn.functional.cross_entropy(
        table[source[:-1]].flatten(0, 1), source[1:].flatten(), reduction="none"
    ).view(19, 3)
    # position p of every chunk
    expected = torch.stack([losses[p::7].mean() for p in range(7)])
    by_position = text.position_losses(model, source, bptt=7)
    assert by_position.shape == (7,) and torch.allclose(
        by_position, expected, atol=1e-6
    )
    assert model.training


class _Counter(torch.nn.Module):
    """A stateful model whose prediction is the number of tokens it has seen (mod V):
    the state matters."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.seen_in_eval = []

    def forward(self, ids, state=None):
        self.seen_in_eval.append(not self.training)
        seen = 0 if state is None else state
        logits = torch.full((*ids.shape, self.vocab_size), -10.0)
        for t in range(len(ids)):
            logits[t, :, (seen + t + 1) % self.vocab_size] = 10.0
        return logits, seen + len(ids)


def test_position_losses_see_the_reset_state():
    vocab_size = 4
    # tokens 0 1 2 3 0 1 ...: the counter is right
    source = (torch.arange(25) % vocab_size).view(-1, 1)
    model = _Counter(vocab_size)
    carried = text.position_losses(model, source, bptt=6)
    reset = text.position_losses(model, source, bptt=6, carry_state=False)
    # carried across chunks, the counter always knows where it is
    assert carried.max() < 1e-3
    # reset at chunks starting at 0, 6, 12, 18 (tokens 0, 2, 0, 2), it is wrong in every
    # second chunk
    assert torch.allclose(reset, torch.full((6,), 10.0), atol=1e-3)


def test_generate_with_a_seed_is_reproducible_and_runs_a_module_in_eval_mode():
    vocab = text.Vocabulary("abcd")
    model = _Counter(len(vocab)).train()
    flat = lambda ids, state: (torch.zeros(len(ids), 1, len(vocab)), state)  # noqa: E731  uniform
    first = text.generate(flat, vocab, list("a"), 30, seed=5)
    assert first == text.generate(flat, vocab, list("a"), 30, seed=5)
    assert first != text.generate(flat, vocab, list("a"), 30, seed=6)
    assert text.generate(model, vocab, list("ab"), 3, greedy=True) == list("cda")
    # eval while generating, the former mode after
    assert all(model.seen_in_eval) and model.training


def test_decode_rejects_indices_outside_the_vocabulary():
    vocab = text.Vocabulary("abc")
    assert vocab.decode(torch.tensor([2, 0])) == ["c", "a"]
    for bad in ([-1], [3], [0, -2]):
        with pytest.raises(ValueError, match=r"indices outside 0..2 cannot be decoded"):
            vocab.decode(bad)


def test_tiny_and_non_finite_temperatures():
    logits = torch.tensor([1.0, 3.0, 2.0])
    for t in (1e-3, 1e-30, 1e-300):
        probabilities = text.reweight(logits, t)
        assert (
            torch.isfinite(probabilities).all()
            and probabilities.argmax() == 1
            and probabilities[1] > 0.999
        )
    assert text.sample(logits, 1e-30) == 1
    for t in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="temperature must be > 0"):
            text.reweight(logits, t)


def test_a_plain_string_prompt_is_rejected_for_a_word_vocabulary():
    words = text.Vocabulary(["the", "cat", "sat"])
    step = _counting_model(len(words))
    with pytest.raises(
        ValueError, match=r"is a string, but this vocabulary holds words: pass a list"
    ):
        text.generate(step, words, "the cat", 2)
    assert len(text.generate(step, words, "the cat".split(), 2, greedy=True)) == 2
    chars = text.Vocabulary("abcd")
    # characters: fine
    assert text.generate(_counting_model(4), chars, "ab", 2, greedy=True) == list("cd")


def test_evaluate_rejects_a_source_too_short_for_one_batch():
    model = torch.nn.Module()
    with pytest.raises(ValueError, match="evaluation needs at least two"):
        text.evaluate(model, torch.zeros(1, 4, dtype=torch.long), bptt=5)
    with pytest.raises(ValueError, match="evaluation needs at least two"):
        text.position_losses(model, torch.zeros(0, 4, dtype=torch.long), bptt=5)


def test_open_vocabulary_nll_is_a_distribution_over_vocabulary_and_unseen_words():
    """Spread over the full word set (the vocabulary less <unk>, <unk> itself, K unseen
    words), the probabilities it charges sum to one, so a smaller vocabulary cannot
    lower the perplexity."""
    torch.manual_seed(0)
    # a model's distribution over 5 words; index 1 is <unk>
    log_p = torch.randn(5).log_softmax(0)
    unk, k, share = 1, 3, 0.4
    full = [(i, False) for i in range(5)] + [
        (unk, True)
    ] * k  # the 4 named words, <unk>, 3 unseen words
    targets = torch.tensor([i for i, _ in full])
    unseen = torch.tensor([u for _, u in full])
    nll = text.open_vocabulary_nll(-log_p[targets], targets, unseen, unk, share, k)
    assert torch.exp(-nll).sum().item() == pytest.approx(1.0, abs=1e-6)
    assert nll[unk].item() == pytest.approx(-log_p[unk].item() - math.log(share))
    assert nll[-1].item() == pytest.approx(
        -log_p[unk].item() - math.log((1 - share) / k)
    )
    # nothing unseen and a share of one: the plain closed-vocabulary loss
    assert torch.equal(
        text.open_vocabulary_nll(
            -log_p, torch.arange(5), torch.zeros(5, dtype=torch.bool), unk, 1.0, 0
        ),
        -log_p,
    )


def test_open_vocabulary_nll_rejects_inconsistent_input():
    nll, targets = torch.ones(3), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="need one shape"):
        text.open_vocabulary_nll(
            nll, targets, torch.zeros(2, dtype=torch.bool), 1, 0.5, 3
        )
    with pytest.raises(ValueError, match="unk_share must lie in"):
        text.open_vocabulary_nll(
            nll, targets, torch.zeros(3, dtype=torch.bool), 1, 0.0, 3
        )
    with pytest.raises(ValueError, match="marked unseen is not <unk>"):
        text.open_vocabulary_nll(
            nll, targets, torch.tensor([True, False, False]), 1, 0.5, 3
        )
    with pytest.raises(ValueError, match="leave them no probability"):
        text.open_vocabulary_nll(
            nll, targets, torch.tensor([False, True, False]), 1, 0.5, 0
        )
