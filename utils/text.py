"""The small text pipeline the LSTM chapters share (torchtext's Field and BPTTIterator
are gone).

Vocabulary and encoding, batching a token stream into columns for truncated
backpropagation through time, evaluating a model's loss chunk by chunk (overall and by
position in a chunk), sampling the next token with a softmax temperature, and generation
from a prompt.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Vocabulary:
    """Maps tokens (characters or words) to indices and back.

    With ``unk`` set (e.g. ``"<unk>"``), unknown tokens are encoded as ``unk``; without
    it, encoding an unknown token raises a ValueError that names it.
    """

    def __init__(
        self,
        tokens: Iterable[str],
        unk: str | None = None,
        specials: Sequence[str] = (),
    ):
        ordered = list(dict.fromkeys([*specials, *([unk] if unk else [])]))
        ordered += sorted(set(tokens) - set(ordered))
        if not ordered:
            raise ValueError("cannot build a vocabulary from no tokens")
        self.itos: list[str] = ordered
        self.stoi: dict[str, int] = {token: i for i, token in enumerate(ordered)}
        self.unk = unk

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def encode(self, tokens: Sequence[str]) -> torch.Tensor:
        """Token indices as a LongTensor (unknown tokens: see the class docstring)."""
        unknown = sorted({t for t in tokens if t not in self.stoi})
        if unknown and self.unk is None:
            shown = ", ".join(repr(t) for t in unknown[:10]) + (
                ", ..." if len(unknown) > 10 else ""
            )
            raise ValueError(
                f"{len(unknown)} token(s) not in the vocabulary of {len(self)}: {shown}"
            )
        fallback = self.stoi.get(self.unk, -1) if self.unk else -1
        return torch.tensor(
            [self.stoi.get(t, fallback) for t in tokens], dtype=torch.long
        )

    def decode(self, indices: Iterable[int] | torch.Tensor) -> list[str]:
        """The tokens of the given indices; an index outside 0..len-1 (negative ones
        included) is an error."""
        ids = [int(i) for i in indices]
        bad = [i for i in ids if not 0 <= i < len(self.itos)]
        if bad:
            raise ValueError(
                f"indices outside 0..{len(self.itos) - 1} cannot be decoded: {bad[:10]}"
            )
        return [self.itos[i] for i in ids]

    def is_characters(self) -> bool:
        """True when every token is a single character (a character-level
        vocabulary)."""
        return all(len(token) == 1 for token in self.itos if token != self.unk)


def batchify(stream: torch.Tensor, batch_size: int) -> torch.Tensor:
    """A 1-D token stream -> (T, batch_size): column b holds the b-th contiguous slice.

    The tokens that do not fill a whole row are dropped. Columns are independent
    streams, so a hidden state can be carried from one (bptt x batch) chunk to the next.
    """
    if stream.dim() != 1:
        raise ValueError(
            f"batchify needs a 1-D stream of token ids, got shape {tuple(stream.shape)}"
        )
    if batch_size <= 0 or len(stream) < batch_size:
        raise ValueError(f"cannot split {len(stream)} tokens into {batch_size} columns")
    rows = len(stream) // batch_size
    return stream[: rows * batch_size].view(batch_size, rows).t().contiguous()


def get_batch(
    source: torch.Tensor, i: int, bptt: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``source[i:i+L]`` and targets ``source[i+1:i+1+L]`` with
    L = min(bptt, T - 1 - i)."""
    length = min(bptt, len(source) - 1 - i)
    if length <= 0:
        raise ValueError(
            f"no batch starts at row {i} of a source with {len(source)} rows"
        )
    return source[i : i + length], source[i + 1 : i + 1 + length]


def word_tokens(lines: Iterable[str], eos: str = "<eos>") -> list[str]:
    """Whitespace-split words of each line, each line closed by ``eos`` (WikiText's
    convention)."""
    return [word for line in lines for word in (*line.split(), eos)]


def open_vocabulary_nll(
    nll: torch.Tensor,
    targets: torch.Tensor,
    unseen: torch.Tensor,
    unk_index: int,
    unk_share: float,
    unseen_types: int,
) -> torch.Tensor:
    """Per-token NLL over the vocabulary *plus* ``unseen_types`` words the model cannot
    name, so that perplexities of models with different vocabularies compare over one
    fixed set of words.

    The probability the model gives ``<unk>`` is split: ``unk_share`` of it to the
    corpus's own ``<unk>`` token, the rest uniformly over the unseen words. ``nll``
    holds ``-log p(target)`` of the model's vocabulary; ``unseen`` marks targets that
    are ``<unk>`` only because the word is unseen.
    """
    if not nll.shape == targets.shape == unseen.shape:
        raise ValueError(
            f"nll, targets and unseen need one shape, got {tuple(nll.shape)}, "
            f"{tuple(targets.shape)} and {tuple(unseen.shape)}"
        )
    if not 0 < unk_share <= 1 or unseen_types < 0:
        raise ValueError(
            "unk_share must lie in (0, 1] and unseen_types "
            f"be >= 0, got {unk_share} and {unseen_types}"
        )
    unseen = unseen.to(nll.device).bool()
    is_unk = targets == unk_index
    if (unseen & ~is_unk).any():
        raise ValueError(
            "a target marked unseen is not <unk>: unseen "
            "words are the ones the vocabulary maps to <unk>"
        )
    if unseen.any() and (unseen_types == 0 or unk_share == 1):
        raise ValueError(
            f"{int(unseen.sum())} unseen target(s), but unseen_types={unseen_types} "
            f"and unk_share={unk_share} leave them no probability"
        )
    own = -math.log(unk_share)
    each_unseen = (
        -math.log((1 - unk_share) / unseen_types)
        if unseen_types and unk_share < 1
        else 0.0
    )
    charge = torch.where(
        unseen, torch.full_like(nll, each_unseen), torch.full_like(nll, own)
    )
    return nll + torch.where(is_unk, charge, torch.zeros_like(nll))


State = torch.Tensor | tuple[torch.Tensor, ...] | None


def detach_state(state: State) -> State:
    """The same hidden state cut from the graph of the previous chunk
    (``repackage_hidden``).

    Truncated backpropagation through time carries the *values* of the state from one
    chunk to the next, but not its history: without this, every backward pass would run
    back to the first chunk.
    """
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return tuple(s.detach() for s in state)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode (no dropout), then put it back in its former mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def token_losses(
    model: nn.Module, source: torch.Tensor, bptt: int, carry_state: bool = True
) -> Iterator[torch.Tensor]:
    """The cross-entropy of every target token, chunk by chunk: tensors (L, B),
    L <= ``bptt``.

    ``model(ids, state)`` returns logits (L, B, V) and the new state. The state is
    carried across chunks as in training (or reset to None with ``carry_state=False``);
    the model runs in eval mode (no dropout) and is put back in its former mode when the
    loop ends.
    """
    state = None
    with _eval_mode(model):
        for i in range(0, len(source) - 1, bptt):
            inputs, targets = get_batch(source, i, bptt)
            logits, state = model(inputs, state if carry_state else None)
            yield F.cross_entropy(
                logits.flatten(0, 1), targets.flatten(), reduction="none"
            ).view(targets.shape)


def _check_source(source: torch.Tensor) -> None:
    if source.dim() < 1 or len(source) < 2:
        raise ValueError(
            f"the source has {len(source) if source.dim() else 0} "
            "row(s): evaluation needs at least two (an input and its "
            "target); use more text or a smaller batch size in batchify"
        )


def evaluate(model: nn.Module, source: torch.Tensor, bptt: int) -> float:
    """Mean cross-entropy in nats per token of ``model`` on a batchified ``source``
    (T, B), the state carried across chunks as in training (see
    :func:`token_losses`)."""
    _check_source(source)
    total, count = 0.0, 0
    for losses in token_losses(model, source, bptt):
        total += losses.sum().item()
        count += losses.numel()
    return total / count


def position_losses(
    model: nn.Module, source: torch.Tensor, bptt: int, carry_state: bool = True
) -> torch.Tensor:
    """Mean cross-entropy at each position 0..bptt-1 of the chunks, shape (bptt,): how
    much the context a chunk has seen so far helps (see :func:`token_losses`)."""
    _check_source(source)
    totals, counts = torch.zeros(bptt), torch.zeros(bptt)
    for losses in token_losses(model, source, bptt, carry_state):
        totals[: len(losses)] += losses.sum(1).cpu()
        counts[: len(losses)] += losses.shape[1]
    return totals / counts


def _check_temperature(temperature: float) -> None:
    if not (
        isinstance(temperature, (int, float))
        and math.isfinite(temperature)
        and temperature > 0
    ):
        raise ValueError(
            f"temperature must be > 0, got {temperature}; for the limit T -> 0 "
            "use greedy decoding (the most likely token)"
        )


def reweight(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T): the next-token distribution at temperature T.

    Computed in float64 from logits shifted by their maximum, so even a tiny T gives a
    valid (nearly one-hot) distribution rather than an overflow.
    """
    _check_temperature(temperature)
    shifted = logits.double() - logits.double().amax(dim=-1, keepdim=True)
    return torch.softmax(shifted / temperature, dim=-1).float()


def sample(
    logits: torch.Tensor,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> int:
    """One token index drawn from softmax(logits / temperature)."""
    probabilities = reweight(logits.detach().reshape(-1).cpu(), temperature)
    return int(torch.multinomial(probabilities, 1, generator=generator))


Step = Callable[[torch.Tensor, object], tuple[torch.Tensor, object]]


@torch.no_grad()
def generate(
    step: Step,
    vocab: Vocabulary,
    prompt: Sequence[str],
    length: int,
    temperature: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    seed: int | None = None,
) -> list[str]:
    """Continue ``prompt`` by ``length`` tokens.

    ``step(ids, state)`` runs the model on token ids of shape (L, 1) from ``state``
    (None at the start) and returns the logits of shape (L, 1, V) and the new state; a
    module runs in eval mode (no dropout) and is put back in its former mode. Each new
    token is the most likely one (``greedy``) or a sample at ``temperature``, drawn with
    ``generator``, or one seeded with ``seed`` so that a text can be reproduced. The ids
    are put on ``device``, the model's.
    """
    if len(prompt) == 0:
        raise ValueError("the prompt is empty: give at least one token to start from")
    if isinstance(prompt, str) and not vocab.is_characters():
        raise ValueError(
            f"the prompt {prompt[:40]!r} is a string, but this vocabulary holds words: "
            "pass a list of tokens, e.g. text.split()"
        )
    if not greedy:
        _check_temperature(temperature)
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(seed)
    ids = vocab.encode(prompt).view(-1, 1).to(device)
    tokens: list[str] = []
    with _eval_mode(step) if isinstance(step, nn.Module) else nullcontext():
        logits, state = step(ids, None)
        for _ in range(length):
            last = logits[-1, 0]
            index = (
                int(last.argmax()) if greedy else sample(last, temperature, generator)
            )
            tokens.append(vocab.itos[index])
            logits, state = step(torch.tensor([[index]], device=ids.device), state)
    return tokens


class NGram:
    """An interpolated n-gram model of a token stream: the baseline a neural sequence
    model must beat on the same tokens.

    The probability of token w after the history h (its last ``order - 1`` tokens) mixes
    the counts of each context length with the next shorter one,

        p_k(w | h_k) = (c(h_k, w) + strength * p_{k-1}(w | h_{k-1}))
                       / (c(h_k) + strength),

    down to p_0, the unigram counts mixed with the uniform distribution over
    ``vocab_size`` tokens (a Dirichlet prior at every level, so no token ever has
    probability 0). ``strength`` is chosen on held-out tokens, not on the test set.
    """

    def __init__(
        self, stream: Sequence[int], order: int, vocab_size: int, strength: float = 1.0
    ):
        if order < 1 or vocab_size < 1 or not strength > 0:
            raise ValueError(
                f"an n-gram needs order >= 1, vocab_size >= 1 and strength > 0; got "
                f"{order}, {vocab_size}, {strength}"
            )
        self.order, self.vocab_size, self.strength = order, vocab_size, strength
        tokens = [int(t) for t in stream]
        if any(not 0 <= t < vocab_size for t in tokens):
            raise ValueError(f"the stream holds tokens outside 0..{vocab_size - 1}")
        # counts[k][history of k tokens] = {token: count}; totals likewise
        self.counts: list[dict[tuple, dict[int, int]]] = [{} for _ in range(order)]
        self.totals: list[dict[tuple, int]] = [{} for _ in range(order)]
        for i, w in enumerate(tokens):
            for k in range(min(order, i + 1)):
                h = tuple(tokens[i - k : i])
                row = self.counts[k].setdefault(h, {})
                row[w] = row.get(w, 0) + 1
                self.totals[k][h] = self.totals[k].get(h, 0) + 1

    def distribution(self, history: Sequence[int]) -> torch.Tensor:
        """p(next token | history), a (vocab_size,) float64 tensor that sums to 1."""
        p = torch.full((self.vocab_size,), 1.0 / self.vocab_size, dtype=torch.float64)
        history = [int(t) for t in history]
        for k in range(min(self.order, len(history) + 1)):
            h = tuple(history[len(history) - k :]) if k else ()
            total = self.totals[k].get(h, 0)
            if total == 0:
                break  # a longer history with this ending was never seen either
            row = torch.zeros(self.vocab_size, dtype=torch.float64)
            for w, c in self.counts[k][h].items():
                row[w] = c
            p = (row + self.strength * p) / (total + self.strength)
        return p

    def probability(self, history: Sequence[int], token: int) -> float:
        """p(token | history): the mixture of :meth:`distribution`, for one token."""
        p = 1.0 / self.vocab_size
        history = [int(t) for t in history]
        for k in range(min(self.order, len(history) + 1)):
            h = tuple(history[len(history) - k :]) if k else ()
            total = self.totals[k].get(h, 0)
            if total == 0:
                break
            p = (self.counts[k][h].get(int(token), 0) + self.strength * p) / (
                total + self.strength
            )
        return p

    def nll(self, stream: Sequence[int], start: int = 1) -> float:
        """Mean negative log-likelihood, nats per token, of ``stream[start:]``, each
        token given the tokens before it."""
        tokens = [int(t) for t in stream]
        if start < 0 or start >= len(tokens):
            raise ValueError(f"nothing to score: start {start} of {len(tokens)} tokens")
        n = self.order - 1
        total = sum(
            -math.log(self.probability(tokens[max(0, i - n) : i], tokens[i]))
            for i in range(start, len(tokens))
        )
        return total / (len(tokens) - start)
