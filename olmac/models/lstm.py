"""A character-level LSTM language model with a precision highway on its cell state
(docs/lstm.md; Park et al., 2018, "Precision highway for ultra low-precision quantization").

Fake-quant only (the float view of low-width hardware, docs/semantics.md §5), not an integer
program. The model is ``Embedding(V, 64) → one LSTM layer (hidden 128) → Linear(128, V)``
over a fixed 70-character alphabet. Its cell is written out gate by gate in ``lstm_step`` so
that every quantization point is visible; at ``b`` bits (2..16):

* the weights ``W_ih``, ``W_hh`` and the decoder's weight are ``s<b>``, one scale per output
  row (MMSE or max-abs, ``olmac.golden.mmse``); biases and logits stay float;
* the inputs of the gate GEMMs, ``x_t`` (the embedding) and ``h_{t-1}``, are ``s<b>`` with
  per-tensor scales calibrated on the float model; ``h_t`` is quantized once, where it is
  made, and that one value feeds both the recurrence and the decoder;
* the gate outputs ``i, f, o = σ(·)`` are ``u<b>`` on ``[0, 1]`` and ``g = tanh(·)`` is
  ``s<b>`` on ``[-1, 1]`` (fixed scales; ``LSTMQuant(gates=False)`` leaves them float);
* the cell update ``c_t = f·c_{t-1} + i·g`` is computed exactly and rounded once, to the
  width of ``c``: with the **highway** that is 16 bits (``cell_bits``; float with ``None``),
  without it the same ``b`` bits as everything else, at every step.

The two variants differ only in that one rounding. The float model trains with torch's
fused ``nn.LSTM`` kernel on the very parameters the explicit cell reads; each quantized
variant is calibrated from it (post-training quantization), then fine-tuned for
``QAT_STEPS`` steps (quantization-aware training), with gradients through every rounding by
the clipped straight-through estimator (``fake_quantize_ste``).

Data: CPython's bundled documentation text, ``pydoc_data.topics.topics`` (no download),
lower-cased, in sorted key order; the first 90 % trains, the last 10 % validates. The text
differs between Python versions, so cached weights are named after a digest of it.
"""

import hashlib
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from olmac.golden.fake_quant import fake_quantize_ste
from olmac.golden.formats import int_range
from olmac.golden.mmse import mmse_scale
from olmac.spec import HIGHWAY_BITS, WEIGHT_BITS, check_int
from .training import MODEL_DIR, cached, one_thread

__all__ = [
    "ALPHABET", "EMBED", "HIDDEN", "BITS_RANGE", "WEIGHT_SCALES",
    "CALIBRATION_SAMPLES", "FLOAT_STEPS", "QAT_STEPS", "SEEDS",
    "load_corpus", "encode", "decode", "corpus_digest", "CorpusSplit", "corpus_split",
    "fake_quantize_ste", "weight_scale", "activation_scale", "gate_scales", "LSTMQuant",
    "StepQuant", "lstm_step", "CharLSTM", "set_weight_scales", "calibrate", "train_tbptt",
    "train_float",
    "finetune", "perplexity", "float_model", "quantized_model", "PerplexityRow",
    "mean_std", "perplexity_table", "print_table", "bench_section",
]

#: The model's characters: newline and printable ASCII without the capitals (text is
#: lower-cased first); any other character is dropped from the corpus.
ALPHABET = "\n" + "".join(chr(code) for code in range(32, 127) if not chr(code).isupper())
#: Width of the character embedding (the input ``x_t`` of the cell).
EMBED = 64
#: Width of the hidden state ``h`` and the cell state ``c``.
HIDDEN = 128
#: Allowed quantization widths, inclusive (2..4 for the study, 16 for the highway).
BITS_RANGE = (2, 16)
#: Weight-scale rules: per-output-row min-MSE grid search or max-abs (golden/mmse.py).
WEIGHT_SCALES = ("mmse", "max_abs")
#: Most values of one activation the calibration looks at (every k-th value).
CALIBRATION_SAMPLES = 1 << 14
#: Optimizer steps of the float model (batch 64 × 64 characters): about 1 min on an idle
#: thread, 3 on a busy machine.
FLOAT_STEPS = 2400
#: Optimizer steps of quantization-aware fine-tuning per variant (batch 32 × 64 characters).
QAT_STEPS = 150
#: Seeds of the float models that ``perplexity_table`` averages over (each quantized
#: variant is fine-tuned from the float model of its seed).
SEEDS = (0, 1, 2)


# -- corpus --------------------------------------------------------------------------------

def load_corpus() -> str:
    """``pydoc_data.topics.topics`` joined in sorted key order, lower-cased, with every
    character outside ``ALPHABET`` dropped (tabs, curly quotes, ...). About 460 000
    characters on CPython 3.11; deterministic for one Python version.

    >>> text = load_corpus()
    >>> len(text) > 100_000 and set(text) <= set(ALPHABET)
    True
    """
    from pydoc_data.topics import topics
    allowed = set(ALPHABET)
    text = "".join(topics[key] for key in sorted(topics)).lower()
    return "".join(ch for ch in text if ch in allowed)


_INDEX = {ch: i for i, ch in enumerate(ALPHABET)}


def encode(text: str) -> torch.Tensor:
    """Character indices into ``ALPHABET`` as int64.

    >>> encode("ab\\n")
    tensor([40, 41,  0])

    Raises
    ------
    ValueError
        If a character is not in ``ALPHABET``; the message shows it.
    """
    try:
        return torch.tensor([_INDEX[ch] for ch in text], dtype=torch.int64)
    except KeyError as error:
        raise ValueError(f"text has a character outside ALPHABET: {error.args[0]!r}") from None


def decode(ids: torch.Tensor) -> str:
    """The inverse of ``encode``.

    >>> decode(encode("for x in y:"))
    'for x in y:'
    """
    return "".join(ALPHABET[i] for i in ids.tolist())


def corpus_digest(text: str) -> str:
    """First 8 hex digits of the SHA-256 of ``text`` (UTF-8): names cached weights."""
    return hashlib.sha256(text.encode()).hexdigest()[:8]


@dataclass(frozen=True, eq=False)
class CorpusSplit:
    """Encoded characters: ``train`` (the first 90 %) and ``valid`` (the rest), int64."""
    train: torch.Tensor
    valid: torch.Tensor
    digest: str


def corpus_split(text: str | None = None, valid_fraction: float = 0.1) -> CorpusSplit:
    """``text`` (``load_corpus()`` by default) encoded and cut once: the first
    ``round(len·(1 − valid_fraction))`` characters train, the rest validate.

    >>> split = corpus_split("abcdefghij", 0.2)
    >>> decode(split.train), decode(split.valid)
    ('abcdefgh', 'ij')

    Raises
    ------
    TypeError
        If ``valid_fraction`` is not a real number.
    ValueError
        If ``valid_fraction`` is not strictly between 0 and 1, or either part would have
        fewer than two characters.
    """
    if isinstance(valid_fraction, bool) or not isinstance(valid_fraction, (int, float)):
        raise TypeError(f"valid_fraction must be a real number, not {valid_fraction!r}")
    if not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction must be in (0, 1), not {valid_fraction!r}")
    text = load_corpus() if text is None else text
    ids = encode(text)
    cut = round(len(ids) * (1 - valid_fraction))
    if cut < 2 or len(ids) - cut < 2:
        raise ValueError(f"text of {len(ids)} characters is too short to split at "
                         f"valid_fraction={valid_fraction!r}")
    return CorpusSplit(ids[:cut], ids[cut:], corpus_digest(text))


# -- quantizers ----------------------------------------------------------------------------

def _check_bits(name: str, bits: int) -> int:
    return check_int(name, bits, BITS_RANGE)


def weight_scale(w: torch.Tensor, bits: int, method: str = "mmse") -> torch.Tensor:
    """One ``s<bits>`` scale per output row of a 2-D weight, shape ``(C, 1)``, float32.

    ``"mmse"``: ``golden.mmse.mmse_scale`` (per channel) at 2..8 bits; ``"max_abs"``, and
    ``"mmse"`` above 8 bits (where the search has nothing to gain): ``max|w_row| / hi``
    (1 for an all-zero row).

    >>> weight_scale(torch.tensor([[0.5, -1.4], [0.3, 0.0]]), 3, "max_abs")
    tensor([[0.4667],
            [0.1000]])

    Raises
    ------
    TypeError
        If ``bits`` is not an integer in 2..16.
    ValueError
        If ``method`` is not one of ``WEIGHT_SCALES`` or ``w`` is not 2-D.
    """
    _check_bits("bits", bits)
    _check_method(method)
    if w.dim() != 2:
        raise ValueError(f"w must be 2-D (rows × inputs), not {tuple(w.shape)}")
    w = w.detach()
    if method == "mmse" and bits <= WEIGHT_BITS[1]:
        return mmse_scale(w, bits, per_channel=True).to(torch.float32)
    peak = w.abs().amax(dim=1, keepdim=True)
    return torch.where(peak > 0, peak / int_range(bits, True)[1], 1.0).to(torch.float32)


def activation_scale(samples: torch.Tensor, bits: int, *, signed: bool = True,
                     method: str = "mmse") -> torch.Tensor:
    """One per-tensor scale (0-dim, float32) for an activation, from a batch of its values.

    ``"mmse"`` at 2..8 bits: ``golden.mmse.mmse_scale`` of at most ``CALIBRATION_SAMPLES``
    evenly strided values; otherwise ``max|x| / hi``.

    >>> activation_scale(torch.tensor([0.1, -0.1, 0.2, -0.2, 0.5]), 2)
    tensor(0.2998)

    Raises
    ------
    TypeError
        If ``bits`` is not an integer in 2..16.
    ValueError
        If ``method`` is not one of ``WEIGHT_SCALES`` or ``samples`` is empty.
    """
    _check_bits("bits", bits)
    _check_method(method)
    flat = samples.detach().reshape(-1)
    if flat.numel() == 0:
        raise ValueError("samples must have at least one element")
    flat = flat[::max(1, math.ceil(flat.numel() / CALIBRATION_SAMPLES))]
    if method == "mmse" and bits <= WEIGHT_BITS[1]:
        return mmse_scale(flat, bits, signed=signed).to(torch.float32)
    peak = flat.abs().max()
    return torch.where(peak > 0, peak / int_range(bits, signed)[1], 1.0).to(torch.float32)


def _check_method(method: str) -> None:
    if method not in WEIGHT_SCALES:
        raise ValueError(f"method must be one of {WEIGHT_SCALES}, not {method!r}")


def gate_scales(bits: int) -> tuple[float, float]:
    """The fixed scales of the gate outputs: ``1/(2^b − 1)`` for a sigmoid (``u<b>`` spans
    ``[0, 1]``) and ``1/(2^(b−1) − 1)`` for ``g = tanh`` (``s<b>``; ``−2^(b−1)`` unused).

    >>> gate_scales(2)
    (0.3333333333333333, 1.0)
    """
    _check_bits("bits", bits)
    return 1 / int_range(bits, False)[1], 1 / int_range(bits, True)[1]


# -- the cell and the model ----------------------------------------------------------------

@dataclass(frozen=True)
class LSTMQuant:
    """A quantized variant: everything at ``bits``; the cell state at ``cell_bits`` with
    ``highway`` (``None``: float), else at ``bits`` too. ``weight_scale``: ``"mmse"`` or
    ``"max_abs"`` (``WEIGHT_SCALES``).

    >>> LSTMQuant(2).c_bits, LSTMQuant(2, highway=False).c_bits, LSTMQuant(3).label
    (16, 2, '3-bit, highway')

    Raises
    ------
    TypeError
        If ``bits`` or ``cell_bits`` is not an integer in 2..16 (``cell_bits`` may be
        ``None``), or ``highway`` is not a ``bool``.
    ValueError
        If ``weight_scale`` is not one of ``WEIGHT_SCALES``.
    """
    bits: int
    highway: bool = True
    cell_bits: int | None = HIGHWAY_BITS
    weight_scale: str = "mmse"
    gates: bool = True

    def __post_init__(self):
        _check_bits("bits", self.bits)
        for name in ("highway", "gates"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, not {getattr(self, name)!r}")
        if self.cell_bits is not None:
            _check_bits("cell_bits", self.cell_bits)
        if self.weight_scale not in WEIGHT_SCALES:
            raise ValueError(f"weight_scale must be one of {WEIGHT_SCALES}, "
                             f"not {self.weight_scale!r}")

    @property
    def c_bits(self) -> int | None:
        """Width of the cell state: ``cell_bits`` with the highway, else ``bits``."""
        return self.cell_bits if self.highway else self.bits

    @property
    def label(self) -> str:
        return f"{self.bits}-bit, {'highway' if self.highway else 'no highway'}"

    @property
    def tag(self) -> str:
        """A file-name fragment: ``b3_hw16_mmse``, ``b3_hwf_max_abs``, ``b2_nohw_mmse``."""
        cell = f"hw{self.cell_bits or 'f'}" if self.highway else "nohw"
        return f"b{self.bits}_{cell}_{self.weight_scale}{'' if self.gates else '_fgates'}"


@dataclass(frozen=True, eq=False)
class StepQuant:
    """The activation quantizers of one ``lstm_step``: ``h`` at ``bits`` with ``h_scale``;
    the cell state at ``c_bits`` (``None``: float) with ``c_scale``."""
    bits: int
    c_bits: int | None
    h_scale: torch.Tensor | float
    c_scale: torch.Tensor | float
    gates: bool = True


def lstm_step(x_proj: torch.Tensor, h: torch.Tensor, c: torch.Tensor,
              weight_hh: torch.Tensor, quant: StepQuant | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step, gate by gate, with torch's gate order ``i, f, g, o``::

        z = x_proj + h_{t-1}·W_hhᵀ              x_proj = W_ih·x_t + b_ih + b_hh
        i, f, o = Q_u(σ(z_i)), Q_u(σ(z_f)), Q_u(σ(z_o))
        g = Q_s(tanh(z_g))
        c_t = Q_c(f·c_{t-1} + i·g)              the c path: one rounding, at c_bits
        h_t = Q_h(o·tanh(c_t))

    ``Q`` is ``fake_quantize_ste`` at ``quant.bits`` (gate scales of ``gate_scales``,
    ``h`` with ``quant.h_scale``), ``Q_c`` at ``quant.c_bits`` with ``quant.c_scale`` (the
    identity when ``c_bits`` is ``None``); with ``quant=None`` every ``Q`` is the identity.
    ``h`` is expected already quantized (as this function returns it) and ``weight_hh``
    already fake-quantized. Shapes: ``x_proj`` ``N×4H``, ``h`` and ``c`` ``N×H``.

    >>> z = torch.zeros(1, 4)  # H = 1: every gate sees 0, so i = f = o = 0.5 and g = 0
    >>> lstm_step(z, torch.zeros(1, 1), torch.ones(1, 1), torch.zeros(4, 1))
    (tensor([[0.2311]]), tensor([[0.5000]]))
    >>> q = StepQuant(2, 2, h_scale=0.25, c_scale=0.25)  # σ(0) → 1/3 or 2/3: round half even
    >>> lstm_step(z, torch.zeros(1, 1), torch.ones(1, 1), torch.zeros(4, 1), q)
    (tensor([[0.2500]]), tensor([[0.2500]]))
    """
    z = x_proj + h @ weight_hh.T
    zi, zf, zg, zo = z.chunk(4, dim=-1)
    i, f, g, o = torch.sigmoid(zi), torch.sigmoid(zf), torch.tanh(zg), torch.sigmoid(zo)
    if quant is not None and quant.gates:
        unit, symmetric = gate_scales(quant.bits)
        i, f, o = (fake_quantize_ste(v, unit, quant.bits, signed=False) for v in (i, f, o))
        g = fake_quantize_ste(g, symmetric, quant.bits, signed=True)
    c = f * c + i * g
    if quant is not None and quant.c_bits is not None:
        c = fake_quantize_ste(c, quant.c_scale, quant.c_bits, signed=True)
    h = o * torch.tanh(c)
    if quant is not None:
        h = fake_quantize_ste(h, quant.h_scale, quant.bits, signed=True)
    return h, c


State = tuple[torch.Tensor, torch.Tensor]


class CharLSTM(nn.Module):
    """``Embedding(V, embed) → LSTM(embed, hidden) → Linear(hidden, V)``, ``V = 70``.

    The LSTM's parameters live in an ``nn.LSTM`` (``weight_ih_l0`` ``4H×E``, ``weight_hh_l0``
    ``4H×H``, two biases), which ``forward(fused=True)`` runs with torch's own kernel (fast
    float training); the default path runs ``lstm_step`` on the same parameters and is the
    only one that quantizes. With ``quant`` the buffers hold the calibrated scales
    (``calibrate``): ``ih_scale``/``hh_scale`` ``4H×1``, ``decoder_scale`` ``V×1``, and the
    0-dim ``x_scale``, ``h_scale``, ``c_scale``; they are part of the ``state_dict``.
    """

    def __init__(self, quant: LSTMQuant | None = None, *, embed: int = EMBED,
                 hidden: int = HIDDEN):
        super().__init__()
        if quant is not None and not isinstance(quant, LSTMQuant):
            raise TypeError(f"quant must be an LSTMQuant or None, not {quant!r}")
        self.quant = quant
        vocab = len(ALPHABET)
        self.embedding = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.decoder = nn.Linear(hidden, vocab)
        self.register_buffer("ih_scale", torch.ones(4 * hidden, 1))
        self.register_buffer("hh_scale", torch.ones(4 * hidden, 1))
        self.register_buffer("decoder_scale", torch.ones(vocab, 1))
        self.register_buffer("x_scale", torch.tensor(1.0))
        self.register_buffer("h_scale", torch.tensor(1.0))
        self.register_buffer("c_scale", torch.tensor(1.0))

    @property
    def hidden(self) -> int:
        return self.lstm.hidden_size

    def zero_state(self, batch: int) -> State:
        return (torch.zeros(batch, self.hidden), torch.zeros(batch, self.hidden))

    def _weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w_ih, w_hh, w_dec = self.lstm.weight_ih_l0, self.lstm.weight_hh_l0, self.decoder.weight
        if self.quant is None:
            return w_ih, w_hh, w_dec
        b = self.quant.bits
        return (fake_quantize_ste(w_ih, self.ih_scale, b, True),
                fake_quantize_ste(w_hh, self.hh_scale, b, True),
                fake_quantize_ste(w_dec, self.decoder_scale, b, True))

    def forward(self, tokens: torch.Tensor, state: State | None = None, *,
                fused: bool = False) -> tuple[torch.Tensor, State]:
        """Logits ``N×T×V`` for ``N×T`` character indices, and the final ``(h, c)``."""
        state = self.zero_state(tokens.shape[0]) if state is None else state
        x = self.embedding(tokens)
        if fused:
            if self.quant is not None:
                raise ValueError("fused runs torch's float kernel; a quantized model needs "
                                 "fused=False")
            out, (h, c) = self.lstm(x, (state[0][None], state[1][None]))
            return self.decoder(out), (h[0], c[0])
        w_ih, w_hh, w_dec = self._weights()
        step_quant = None
        if self.quant is not None:
            x = fake_quantize_ste(x, self.x_scale, self.quant.bits, True)
            step_quant = StepQuant(self.quant.bits, self.quant.c_bits, self.h_scale,
                                   self.c_scale, self.quant.gates)
        x_proj = x @ w_ih.T + (self.lstm.bias_ih_l0 + self.lstm.bias_hh_l0)
        h, c = state
        outputs = []
        for t in range(tokens.shape[1]):
            h, c = lstm_step(x_proj[:, t], h, c, w_hh, step_quant)
            outputs.append(h)
        return F.linear(torch.stack(outputs, dim=1), w_dec, self.decoder.bias), (h, c)


@torch.no_grad()
def set_weight_scales(model: CharLSTM) -> CharLSTM:
    """Set ``model``'s weight scales (``weight_scale`` per output row, by
    ``quant.weight_scale``) from its current weights; returns ``model``.

    Raises
    ------
    ValueError
        If ``model.quant`` is ``None``.
    """
    q = model.quant
    if q is None:
        raise ValueError("model.quant is None: a float model has no scales to calibrate")
    model.ih_scale.copy_(weight_scale(model.lstm.weight_ih_l0, q.bits, q.weight_scale))
    model.hh_scale.copy_(weight_scale(model.lstm.weight_hh_l0, q.bits, q.weight_scale))
    model.decoder_scale.copy_(weight_scale(model.decoder.weight, q.bits, q.weight_scale))
    return model


@torch.no_grad()
def calibrate(model: CharLSTM, tokens: torch.Tensor) -> CharLSTM:
    """Set ``model``'s scales from its weights and from a float run over ``tokens``
    (``N×T``); returns ``model``.

    Weights: ``set_weight_scales``. Activations, from the float explicit cell (every
    quantizer off): ``x`` and ``h`` with ``activation_scale`` (MMSE); ``c`` on the highway
    at ``cell_bits`` with twice its max-abs scale (headroom: on long texts ``|c|`` grows
    past what a calibration batch shows, and 16 bits can afford one bit of it); likewise
    ``c`` at any width above 8 bits; ``c`` at 2..8 bits (without the highway: at
    ``bits``) with the scale of least loss on ``tokens`` among the MMSE scale and
    fractions of the max-abs one (``_search_c_scale``). The rule depends only on the width
    of ``c``, so the two variants of one width share every scale.

    Raises
    ------
    ValueError
        If ``model.quant`` is ``None``.
    """
    q = set_weight_scales(model).quant
    x = model.embedding(tokens)
    hs, cs = [], []
    x_proj = x @ model.lstm.weight_ih_l0.T + (model.lstm.bias_ih_l0 + model.lstm.bias_hh_l0)
    h, c = model.zero_state(tokens.shape[0])
    for t in range(tokens.shape[1]):
        h, c = lstm_step(x_proj[:, t], h, c, model.lstm.weight_hh_l0)
        hs.append(h)
        cs.append(c)
    h_all, c_all = torch.stack(hs), torch.stack(cs)
    model.x_scale.copy_(activation_scale(x, q.bits))
    model.h_scale.copy_(activation_scale(h_all, q.bits))
    if q.c_bits is None:
        model.c_scale.fill_(1.0)  # unused: c stays float
    elif q.c_bits > WEIGHT_BITS[1]:
        model.c_scale.copy_(2 * activation_scale(c_all, q.c_bits, method="max_abs"))
    else:
        model.c_scale.copy_(_search_c_scale(model, tokens, c_all))
    return model


#: Candidate scales of the low-width cell state, below its max-abs scale: ``2^(-k/2)``.
C_SCALE_HALVINGS = 12


def _search_c_scale(model: CharLSTM, tokens: torch.Tensor, c_all: torch.Tensor
                    ) -> torch.Tensor:
    """The low-width cell-state scale with the least next-character loss on ``tokens``.

    Candidates: the MMSE scale of the float ``c`` values, then ``α_max·2^(-k/2)`` for
    ``k = 0..C_SCALE_HALVINGS``; a later candidate wins only with a strictly lower loss.
    The MMSE scale alone is a poor baseline: it is fitted to the spread of ``|c|`` (tens),
    so it is wider than twice any one step's increment ``|i·g| ≤ 1`` and ``c``, which
    starts at 0, would round back to 0 at every step and never leave it.
    """
    bits = model.quant.c_bits
    top = activation_scale(c_all, bits, method="max_abs")
    candidates = [activation_scale(c_all, bits)]
    candidates += [top * 2 ** (-k / 2) for k in range(C_SCALE_HALVINGS + 1)]
    best, best_loss = candidates[0], math.inf
    for candidate in candidates:
        model.c_scale.copy_(candidate)
        logits, _ = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                               tokens[:, 1:].reshape(-1)).item()
        if loss < best_loss:
            best, best_loss = candidate, loss
    return best


# -- training and evaluation ---------------------------------------------------------------

def _streams(tokens: torch.Tensor, batch: int) -> torch.Tensor:
    """``tokens`` cut into ``batch`` contiguous streams of equal length, ``batch × L``."""
    length = len(tokens) // batch
    if length < 2:
        raise ValueError(f"{len(tokens)} characters are too few for {batch} streams")
    return tokens[:batch * length].reshape(batch, length)


def train_tbptt(model: CharLSTM, tokens: torch.Tensor, *, steps: int, batch: int = 64,
                length: int = 64, lr: float = 3e-3, fused: bool = False,
                rescale_every: int = 0, anneal: bool = False) -> list[float]:
    """Adam on next-character cross-entropy by truncated back-propagation through time;
    returns the loss of every step. ``model`` is left in eval mode.

    ``tokens`` is cut into ``batch`` contiguous streams; step ``k`` reads the next
    ``length`` characters of every stream and starts from the previous step's state
    (detached), from zero again when the streams wrap around. Gradients are clipped to a
    total norm of 1. With ``rescale_every > 0`` (quantization-aware training) the weight
    scales are recomputed from the current weights every that many steps. With
    ``anneal`` the learning rate falls from ``lr`` to 0 over the ``steps`` on a half
    cosine. One thread; deterministic for a given model and ``tokens``.

    Raises
    ------
    TypeError
        If ``steps``, ``batch`` or ``length`` is not a positive integer.
    """
    for name, value in (("steps", steps), ("batch", batch), ("length", length)):
        check_int(name, value, (1, 1 << 30))
    streams = _streams(tokens, batch)
    span = (streams.shape[1] - 1) // length * length
    if span < length:
        raise ValueError(f"streams of {streams.shape[1]} characters are shorter than "
                         f"length + 1 = {length + 1}")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if anneal
                else None)
    losses = []
    with one_thread():
        model.train()
        state = None
        for k in range(steps):
            start = k * length % span
            if start == 0:
                state = None
            if rescale_every and k % rescale_every == 0:
                set_weight_scales(model)
            chunk = streams[:, start:start + length + 1]
            logits, state = model(chunk[:, :-1], state, fused=fused)
            state = (state[0].detach(), state[1].detach())
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                   chunk[:, 1:].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if schedule is not None:
                schedule.step()
            losses.append(loss.item())
        if rescale_every:
            set_weight_scales(model)
    model.eval()
    return losses


def train_float(model: CharLSTM, split: CorpusSplit, *, steps: int = FLOAT_STEPS,
                seed: int = 0) -> CharLSTM:
    """``model`` (float) re-initialized after ``torch.manual_seed(seed)`` (torch's default
    initializations) and trained with ``train_tbptt`` on ``split.train``, fused kernel,
    batch 64 × 64 characters, Adam at 3·10⁻³."""
    torch.manual_seed(seed)
    for module in (model.embedding, model.lstm, model.decoder):
        module.reset_parameters()
    train_tbptt(model, split.train, steps=steps, fused=True)
    return model


def finetune(model: CharLSTM, split: CorpusSplit, *, steps: int = QAT_STEPS) -> CharLSTM:
    """Quantization-aware fine-tuning of a calibrated quantized ``model``: ``train_tbptt``
    on ``split.train`` through the explicit cell, batch 32 × 64 characters, Adam from
    10⁻³ annealed to 0 on a half cosine (so the end point does not jitter with the last
    batches: the two variants of one width are compared at rest), weight scales
    refreshed every 25 steps and at the end (activation scales stay those of the
    calibration)."""
    train_tbptt(model, split.train, steps=steps, batch=32, lr=1e-3, rescale_every=25,
                anneal=True)
    return model


@torch.no_grad()
def perplexity(model: CharLSTM, tokens: torch.Tensor, *, streams: int = 16,
               chunk: int = 256) -> float:
    """``exp`` of the mean cross-entropy per predicted character (nats) over ``tokens``.

    ``tokens`` is cut into ``streams`` contiguous streams (the tail that does not fill
    them is dropped); each is read from a zero state to its end, ``chunk`` characters at
    a time with the state carried, predicting every character but its first.
    """
    data = _streams(tokens, streams)
    model.eval()
    total, count, state = 0.0, 0, None
    with one_thread():
        for start in range(0, data.shape[1] - 1, chunk):
            piece = data[:, start:start + chunk + 1]
            logits, state = model(piece[:, :-1], state)
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                     piece[:, 1:].reshape(-1), reduction="sum").item()
            count += piece[:, 1:].numel()
    return math.exp(total / count)


def _calibration_tokens(split: CorpusSplit) -> torch.Tensor:
    """8 streams × 256 characters from the start of the training text."""
    return _streams(split.train[:8 * 256], 8)


def float_model(split: CorpusSplit | None = None, *, seed: int = 0,
                directory: Path | str = MODEL_DIR) -> CharLSTM:
    """The float model of ``train_float`` with ``seed``, cached as
    ``lstm_float_s<FLOAT_STEPS>_seed<seed>_<digest>.pt``.

    Raises
    ------
    TypeError
        If ``seed`` is not an integer in 0..2³¹ − 1.
    """
    check_int("seed", seed, (0, (1 << 31) - 1))
    split = corpus_split() if split is None else split
    return cached(f"lstm_float_s{FLOAT_STEPS}_seed{seed}_{split.digest}", CharLSTM,
                  lambda model: train_float(model, split, seed=seed), directory)


def quantized_model(quant: LSTMQuant, split: CorpusSplit | None = None, *, seed: int = 0,
                    directory: Path | str = MODEL_DIR, steps: int = QAT_STEPS) -> CharLSTM:
    """``quant``'s variant: the weights of the float model of ``seed``, ``calibrate``d on
    the training text, then ``finetune``d for ``steps`` (0: post-training quantization);
    cached as ``lstm_<quant.tag>_s<FLOAT_STEPS>_q<steps>a_seed<seed>_<digest>.pt`` (``a``:
    the annealed fine-tuning)."""
    split = corpus_split() if split is None else split

    def build(model: CharLSTM) -> CharLSTM:
        model.load_state_dict(float_model(split, seed=seed, directory=directory).state_dict())
        with one_thread():
            calibrate(model, _calibration_tokens(split))
        return finetune(model, split, steps=steps) if steps else model

    name = f"lstm_{quant.tag}_s{FLOAT_STEPS}_q{steps}a_seed{seed}_{split.digest}"
    return cached(name, lambda: CharLSTM(quant), build, directory)


@dataclass(frozen=True)
class PerplexityRow:
    """One row of ``perplexity_table``: per seed (in ``seeds`` order) the validation
    perplexity after quantization-aware fine-tuning (``qat``) and after calibration alone
    (``ptq``); ``bits``, ``highway`` and ``ptq`` are ``None`` for the float model, whose
    values are in ``qat``."""
    label: str
    bits: int | None
    highway: bool | None
    seeds: tuple[int, ...]
    qat: tuple[float, ...]
    ptq: tuple[float, ...] | None

    @property
    def perplexity(self) -> float:
        """Mean of ``qat`` over the seeds."""
        return statistics.fmean(self.qat)


def mean_std(values: tuple[float, ...]) -> tuple[float, float]:
    """Mean and sample standard deviation (``n − 1``; 0 for one value).

    >>> mean_std((3.0, 4.0, 5.0))
    (4.0, 1.0)
    """
    return (statistics.fmean(values),
            statistics.stdev(values) if len(values) > 1 else 0.0)


def perplexity_table(bits: tuple[int, ...] = (4, 3, 2), *, seeds: tuple[int, ...] = SEEDS,
                     split: CorpusSplit | None = None, directory: Path | str = MODEL_DIR,
                     steps: int = QAT_STEPS, weight_scale: str = "mmse"
                     ) -> list[PerplexityRow]:
    """Validation perplexity, per seed in ``seeds``, of the float model, then of each
    width in ``bits`` with the highway (``c`` at 16 bits), then of each without (``c`` at
    the same width): after ``steps`` of quantization-aware fine-tuning, and (``ptq``)
    after calibration alone.

    Trains what is not cached under ``directory`` (first run, per seed: 1–3 min for the
    float model and 15–40 s per quantized variant on one thread, by the machine's load);
    cached, the evaluation takes about 15 s per seed.

    Raises
    ------
    TypeError
        If a width is not an integer in 2..16 or a seed not an integer in 0..2³¹ − 1.
    ValueError
        If ``weight_scale`` is not one of ``WEIGHT_SCALES`` or ``seeds`` is empty.
    """
    quants = [LSTMQuant(b, highway=highway, weight_scale=weight_scale)
              for highway in (True, False) for b in bits]
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    split = corpus_split() if split is None else split
    rows = [PerplexityRow("float", None, None, seeds, tuple(
        perplexity(float_model(split, seed=seed, directory=directory), split.valid)
        for seed in seeds), None)]
    for quant in quants:
        ptq, qat = (tuple(perplexity(quantized_model(quant, split, seed=seed,
                                                     directory=directory, steps=n),
                                     split.valid) for seed in seeds)
                    for n in (0, steps))
        rows.append(PerplexityRow(quant.label, quant.bits, quant.highway, seeds, qat, ptq))
    return rows


def _cell(values: tuple[float, ...]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.3f} ± {std:.3f}"


def print_table(rows: list[PerplexityRow]) -> None:
    """Print ``perplexity_table``'s rows as markdown: mean ± standard deviation over the
    seeds, then whether the highway's QAT mean is lower than the no-highway one by more
    than one standard deviation (the larger of the two) at each width."""
    print("| model | weights, x, h, gates | cell state c | perplexity, PTQ "
          "| perplexity, QAT |")
    print("|---|---|---|---:|---:|")
    for row in rows:
        if row.bits is None:
            print(f"| float | float | float | {_cell(row.qat)} | {_cell(row.qat)} |")
        else:
            cell = f"{HIGHWAY_BITS} bits (highway)" if row.highway else f"{row.bits} bits"
            print(f"| {row.label} | {row.bits} bits | {cell} | {_cell(row.ptq)} | "
                  f"{_cell(row.qat)} |")
    pairs = {(row.bits, row.highway): row for row in rows if row.bits is not None}
    print()
    for bits in sorted({b for b, _ in pairs}, reverse=True):
        if (bits, True) not in pairs or (bits, False) not in pairs:
            continue
        for column in ("ptq", "qat"):
            (high, high_std), (low, low_std) = (mean_std(getattr(pairs[(bits, hw)], column))
                                                for hw in (True, False))
            verdict = ("helps" if low - high > max(high_std, low_std) else
                       "hurts" if high - low > max(high_std, low_std) else
                       "within one std")
            # both variants of a seed start from the same float model: the per-seed
            # difference removes the spread the float models share
            gain = tuple(a - b for a, b in zip(getattr(pairs[(bits, False)], column),
                                               getattr(pairs[(bits, True)], column)))
            print(f"- {bits} bits, {column.upper()}: highway {high:.3f}, without "
                  f"{low:.3f}: {verdict}; without − highway per seed {_cell(gain)}")


def bench_section(directory: Path | str = MODEL_DIR) -> None:
    """Print ``perplexity_table()`` as a markdown section (for ``make bench``)."""
    began = time.perf_counter()
    rows = perplexity_table(directory=directory)
    print("## Character LSTM: precision highway on the cell state (docs/lstm.md)")
    print()
    print(f"Validation perplexity per character (exp of mean cross-entropy), pydoc topics "
          f"text, mean ± standard deviation over seeds {', '.join(map(str, SEEDS))} (one "
          f"float model per seed), {QAT_STEPS} QAT steps per variant; c at {HIGHWAY_BITS} "
          f"bits with the highway, at the same width without.")
    print()
    print_table(rows)
    print()
    print(f"({time.perf_counter() - began:.1f} s including any training not cached)")
