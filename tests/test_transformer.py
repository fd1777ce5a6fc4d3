"""The Transformer chapter's model and generation, executed from its notebook: the
key/value cache gives the logits of the whole context, and cached generation writes the
same text as recomputing the context at every step, also past the context's length."""

import pytest
import torch
import torch.nn.functional as F

from benchmarks.common import definitions
from utils import text

NAMES = {
    "attention",
    "causal_sdpa",
    "CausalSelfAttention",
    "Block",
    "CharGPT",
    "uncached_step",
    "cached_step",
}


@pytest.fixture(scope="module")
def chapter():
    return definitions("transformer", NAMES)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models step fastest on one thread (and wait on no busy second core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(chapter, block_size=16):
    torch.manual_seed(0)
    vocab = text.Vocabulary("abcdefgh .")
    model = chapter["CharGPT"](
        len(vocab), block_size, layers=2, channels=32, heads=4, dropout=0.1
    ).eval()
    return model, vocab


def test_attention_by_hand_matches_sdpa_with_and_without_earlier_keys(chapter):
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 12, 8).unbind(0)  # (B, H, S, d)
    ours, weights = chapter["attention"](q, k, v)
    fused = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(ours, fused, atol=1e-5)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 4, 12))
    assert (weights.triu(1) == 0).all()  # no weight on the future
    # the last 3 queries against all 12 keys: the rows of the full computation
    late, _ = chapter["attention"](q[:, :, -3:], k, v)
    assert torch.allclose(late, ours[:, :, -3:], atol=1e-5)


def test_the_cache_gives_the_logits_of_the_whole_context(chapter):
    model, vocab = _model(chapter)
    ids = torch.randint(0, len(vocab), (2, model.block_size))
    with torch.no_grad():
        whole, _ = model(ids)
        first, caches = model(ids[:, :5])  # a prefill,
        middle, caches = model(ids[:, 5:9], caches)  # several new positions at once,
        pieces = [first, middle]
        for t in range(9, model.block_size):  # then one at a time
            logits, caches = model(ids[:, t : t + 1], caches)
            pieces.append(logits)
    assert caches[0][0].shape == (2, 4, model.block_size, 8)
    assert torch.allclose(torch.cat(pieces, dim=1), whole, atol=1e-5)
    with pytest.raises(ValueError, match="do not fit the context"):
        model(ids[:, :1], caches)


@pytest.mark.parametrize("keep", [8, 15])
@pytest.mark.parametrize(
    "how", [dict(temperature=1.0, seed=3), dict(greedy=True)], ids=["sampled", "greedy"]
)
def test_cached_generation_writes_what_recomputing_the_context_writes(
    chapter, keep, how
):
    model, vocab = _model(chapter)
    length = 4 * model.block_size
    # the second prompt is longer than the context
    for prompt in (list("abc"), list("abcdefgh. " * 3)):
        uncached, cached = (
            text.generate(chapter[name](model, keep), vocab, prompt, length, **how)
            for name in ("uncached_step", "cached_step")
        )
        assert len(cached) == length and cached == uncached


def test_the_cached_step_keeps_at_most_block_size_positions(chapter):
    model, vocab = _model(chapter)
    step = chapter["cached_step"](model, keep=8)
    ids = vocab.encode(list("abcdefgh")).view(-1, 1)
    logits, (caches, context) = step(ids, None)
    assert logits.shape == (8, 1, len(vocab)) and context.shape == (1, 8)
    for _ in range(3 * model.block_size):
        logits, (caches, context) = step(ids[:1], (caches, context))
        assert context.shape[1] <= model.block_size
        assert caches[0][0].shape[2] == context.shape[1]
