"""The neural memory network with fast & slow controllers, on episodes (the paper's setting).

Fernando, Denman, Sridharan, Fookes. "Fast & Slow Learning: Incorporating Synthetic Gradients
in Neural Memory Controllers" (arXiv 2011.05438, 2020). What the paper states: the NMN's
controllers (read and write) learn *fast* from synthetic gradients (DNI, Jaderberg et al.
2017) so that they can "quickly determine which memories are to be retained and which are to
be erased" within a task, while the rest of the network learns *slowly* from true gradients;
the claim is fast adaptation — rare samples absorbed within an episode — on meta-learning
classification (MANN's protocol, Santoro et al. 2016) and regression. It publishes no code
and no architecture details; what follows is our design, each open choice marked (*open*).

Protocol (`strategies.nmn_episodes`): at step t the network sees (x_t, y_{t−1}); labels are
shuffled per episode; the memory is reset at each episode; one write per step; K ≥ T slots, so
a memory holds a whole episode.

Model (`EpisodicNMN`). Encoder u_t = e(x_t) (an MLP; slow). Controller: an LSTM over
[u_t; y_{t−1}] (fast). Memory: key/value slots (*open*: MANN stores one vector; key/value as
in Kaiser et al. 2017). Read controller (fast): a query q_t and a strength β from [h_t; u_t]
(*open*: from h_t alone, 300 updates of bptt left the 2nd-presentation accuracy at 30% on
digits; with u_t beside it, 87% after 50); w^r = softmax(β s(q_t, M^key)); r_t = w^r M^value. The score s
(``addressing``, *open*: the paper names MANN's memory, whose read is cosine, and publishes no read of its own):
``cosine`` (the default, the archived runs) — s = cos(q_t, M^key_i), MANN's and the NTM's; or ``unit`` — the query is
normalised as it is made, q_t/‖q_t‖, so every key is written as a unit vector (Kaiser et al. 2017 keep normalised
keys too), and s = q_t·M^key_i, a plain dot product. Why: cosine divides by ‖M^key_i‖, and a slot that writes have
touched with total weight w has ‖M^key_i‖ ≈ w‖q‖, so its score's gradient grows as 1/w — the future gradient sg must
predict is then dominated by these keys' (see "Measured"). With unit keys nothing divides by a slot's norm
(∂s/∂M^key_i = q_t, of norm 1); a slot holding a whole key scores its cosine as before, a slot written with weight
w about w times that (a barely written slot is hard to match instead of as easy as a full one). The slot is not
renormalised after a soft write (that would bring back 1/‖slot‖); the one norm divided by is the query's, made by
a linear layer from [h_t; u_t].
Write controller (fast): from [h_{t−1}; y_{t−1}] — the previous step's state and the label just
revealed — a value v and a gate σ(g); the key is q_{t−1}, the query x_{t−1} was read with
(*open*: keys and queries then share one space from the start); write weights
w^w = σ(g)·w^r_{t−1} + (1 − σ(g))·1[least-used slot] (MANN's LRUA, §3), each slot moving to the
written pair by its weight: M_i ← (1 − w^w_i) M_i + w^w_i (q_{t−1}, v). At initialisation the
gate is nearly closed (writes go to fresh slots) and β ≈ 9. Output (slow): a linear head on
[h_t; r_t] — the controller state and the memory read only, never the encoder directly.
Baseline ``lstm``: the same controller and head without a memory.

Meta-train classes: digits 0–4 at 0°, 90°, 180°, 270° as 20 classes (Santoro et al.'s rotation
augmentation, §4.1): with only the 5 classes, bp reached 95% at the 2nd presentation on
validation episodes of those classes and 29% on the held-out ones (150 updates).

Training (`Trainer`), one batch of episodes per update, with the run's optimiser (the grid: Adam, MANN's
choice; the synthesizers always Adam):
* ``bptt`` — backprop through the whole episode; one update per batch (reference).
* ``bp`` — truncated backprop: the episode is cut into chunks of ``truncation`` steps; after each
  chunk the controllers step at the fast lr (``fast_lr_ratio`` × train.lr); the encoder and head
  accumulate and step once per episode at train.lr (slow). No gradient crosses a chunk boundary,
  so a write in one chunk never learns from a read in a later one.
* ``sg`` — as ``bp``, and each chunk's backward also receives a synthetic gradient at its end
  state (h, c, memory keys and values, read weights): ĝ = S(state), the synthesizers' guess of
  the future chunks' gradient (Jaderberg et al. §3.1, bootstrapped: S is regressed on the true
  gradient at the next chunk's start, which includes that chunk's own ĝ). Synthesizers: an MLP
  on [h; c; q] for (∂h, ∂c, ∂q) and one MLP shared by all slots on [M^key_i; M^value_i; w^r_i; h]
  for each slot's gradients (*open*; cDNI's label conditioning is left out: the future labels
  are unknown at a boundary); last layers zero-initialised; Adam at ``synth_lr``. Which state is synthesised
  (``synth_state``, *open*): ``all`` (the default, the archived runs) or ``controller`` — h, c and q only, as DNI
  for RNNs synthesises the core state's gradient (Jaderberg et al. §3.1, §3.3); the memory tensors then get no
  synthetic gradient (as in bp), are not regressed on, and no guess of theirs enters the bootstrapped targets.
* ``lstm`` — the memory-free baseline, trained as ``bptt``.

The gate (``probe_cosine``): on fixed validation episodes, at every chunk boundary, the cosine
between S(state) and the *true* future gradient (full backprop of every later step's loss). A
comparison of sg with bp means something only when this is clearly above zero. Its ceiling
(``future_gradient_agreement``, benchmarks/nmn_gradient_ceiling.py): the cosine between the true
future gradients of two futures of the same state — how much of the target the state determines.

Measured (experiments/nmn_episodic.yaml, 3 seeds, archived; benchmarks/nmn.py): the gate fails —
synthesizer cosine 0.00 ± 0.02 on digits, −0.01 ± 0.04 on the sinusoid — although the state
determines half the future gradient (agreement 0.50 after 150 bp updates: a ceiling near 0.7), so
sg gets no verdict; its controllers stay at chance on digits. Why (benchmarks/nmn_synth_capacity.py, a frozen
network): the future gradient is dominated by the memory keys' (cosine addressing: ∝ 1/‖key‖ for barely written
slots), which the synthesizers cannot predict (0.09 of a 0.68 ceiling after 2,000 steps); h is learnable from the
true target (0.40 of 0.50) but not from the bootstrapped one, which the mispredicted key gradients pollute.
Synthesising the controller's state only (synth_state "controller"; the same probe, ``--synth-state controller``,
seed 0, sinusoid 600 steps, digits 400) removes that pollution — h from the bootstrapped target reaches 0.28 of a
0.50 ceiling on the sinusoid, 0.20 of 0.30 on digits — and over h, c, q the probe reaches 0.23 of 0.33 on the
sinusoid but 0.07 of 0.39 on digits, whose q gradient stays unpredicted (0.05 of 0.47; rerun later with the
committed script: 0.28 of 0.43 and 0.04 of 0.35, cause not found). In training the gate fails
all the same (experiments/nmn_episodic_controller_sg.yaml, 150 updates, 3 seeds × 2 lr ratios: −0.04 to 0.05; with
600 updates, experiments/nmn_episodic_controller_long.yaml: −0.005, −0.003): the synthesizers do not even fit their
own targets there (0.00–0.04) while the controllers move under them. sg then scores as bp (digits 44 → 74% from the
2nd to the 10th presentation, bp 42 → 72%) — its synthetic gradients no longer hurt, but they are no signal either.
Reading without the 1/‖key‖ factor (addressing "unit"; the same probes with ``--addressing unit``, seed 0, sinusoid
600 steps, digits --length 50 --steps 400, each beside a cosine run of today's script): the keys' true future gradient
per episode falls from 860–3,700 to 5–9 (sinusoid) and from 36–2,700 to 2–6 (digits), the size of the other tensors'
(0.02–4), and h's bootstrapped target is no longer polluted (digits: h 0.23 from it, 0.22 from the true target, of
0.44; cosine 0.05 and 0.18 of 0.37). The whole is still not predicted: over every tensor 0.12 of a 0.60 ceiling on the
sinusoid (cosine 0.10 of 0.58) and 0.05 of 0.52 on digits (cosine 0.28 of 0.51 — there the keys' gradient is the whole
target, and its size at barely written slots can be read off their norm); the now small keys' gradient is unpredicted
(0.14, 0.03), the query's too (0.00, 0.05 of 0.57, 0.55); controller-only −0.12 and 0.12 (cosine 0.28 and 0.04), so
the grid below synthesises every tensor. The ceiling after 150 bp updates (benchmarks/nmn_gradient_ceiling.py, digits)
drops from 0.71 to 0.56. In training the gate fails again (experiments/nmn_episodic_addressing.yaml: sg with every
tensor synthesised vs bp, ratio 1, 150 updates, 3 seeds): 0.03 ± 0.05 on digits (−0.001, 0.087, −0.000), 0.03 ± 0.005
on the sinusoid — while on digits two seeds' synthesizers fit their own bootstrapped targets at 0.76 and 0.88: their
own guesses passed back through a chunk. sg stays at chance on digits (23 → 20% from the 2nd to the 10th presentation;
bp 52 → 73%) and is near bp on the sinusoid (MSE after 10 points 0.54 ± 0.03, bp 0.49 ± 0.04; bp with cosine 1.03 ±
0.09). The 1/‖key‖ factor made the keys' gradient huge; it is not why the gate fails.
The memory itself works: bp's meta-test accuracy goes 42 → 72% from the 2nd to the 10th presentation, the
memory-free LSTM's 30 → 22%; sinusoid MSE after 10 points 1.03 (bp) vs 3.12 (LSTM).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

METHODS = ("sg", "bp", "bptt", "lstm")
STATE = ("h", "c", "query", "keys", "values", "read")      # the state that carries gradient between steps
CONTROLLER_STATE = ("h", "c", "query")                      # the controller's own part of it
SYNTH_STATES = ("all", "controller")                        # what sg's synthesizers predict (`StateSynthesizer`)
ADDRESSING = ("cosine", "unit")                             # how a query scores the slots (`EpisodicNMN.similarity`)


def mlp(sizes) -> nn.Sequential:
    layers = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class EpisodicNMN(nn.Module):
    """Encoder, LSTM controller, key/value memory with LRUA writes, head on [h; r] (see the module docstring)."""

    def __init__(self, input_dim: int, n_out: int, label_dim: int, *, encoder_hidden: int = 128,
                 encoder_dim: int = 64, hidden: int = 64, slots: int = 64, key_dim: int = 32, value_dim: int = 32,
                 memory: bool = True, usage_decay: float = 0.95, addressing: str = "cosine"):
        super().__init__()
        if addressing not in ADDRESSING:
            raise ValueError(f"addressing: {addressing!r}; one of {ADDRESSING}")
        self.memory, self.slots, self.usage_decay, self.addressing = memory, slots, usage_decay, addressing
        self.key_dim, self.value_dim, self.hidden = key_dim, value_dim, hidden
        self.encoder = nn.Sequential(mlp([input_dim, encoder_hidden, encoder_dim]), nn.ReLU())
        self.cell = nn.LSTMCell(encoder_dim + label_dim, hidden)
        if memory:
            self.write = nn.Linear(hidden + label_dim, value_dim + 1)
            self.read_key = nn.Linear(hidden + encoder_dim, key_dim + 1)
            with torch.no_grad():
                self.read_key.bias[-1].fill_(8.0)       # β starts sharp (≈ 9): a flat read over K slots gives no signal
                self.write.bias[-1].fill_(-3.0)         # writes start in fresh slots, not over the slot just read
        self.head = nn.Linear(hidden + (value_dim if memory else 0), n_out)

    @classmethod
    def for_params(cls, params, input_dim: int, n_out: int, label_dim: int) -> "EpisodicNMN":
        """The network a run of `params` (NMNEpisodicParams) trains: one place for the runner and the probes."""
        return cls(input_dim, n_out, label_dim, encoder_hidden=params.encoder_hidden, encoder_dim=params.encoder_dim,
                   hidden=params.hidden, slots=params.slots, key_dim=params.key_dim, value_dim=params.value_dim,
                   memory=params.method != "lstm", addressing=params.addressing)

    def controller_parameters(self):
        """Fast: the LSTM and the read/write interfaces."""
        for module in (self.cell, *((self.write, self.read_key) if self.memory else ())):
            yield from module.parameters()

    def slow_parameters(self):
        yield from self.encoder.parameters()
        yield from self.head.parameters()

    def initial_state(self, batch: int) -> dict[str, torch.Tensor]:
        zeros = lambda *s: torch.zeros(batch, *s)  # noqa: E731
        state = {"h": zeros(self.hidden), "c": zeros(self.hidden), "usage": zeros(self.slots)}
        if self.memory:
            state.update(query=zeros(self.key_dim), keys=zeros(self.slots, self.key_dim),
                         values=zeros(self.slots, self.value_dim), read=zeros(self.slots))
        return state

    def step(self, state: dict, u: torch.Tensor, prev_label: torch.Tensor, first: bool):
        """One time step: write (y_{t−1} with the previous state), update the controller, read, predict."""
        new = dict(state)
        if self.memory and not first:
            out = self.write(torch.cat([state["h"], prev_label], -1))
            key, value = state["query"], torch.tanh(out[:, :-1])      # stored under the query x_{t−1} was read with
            gate = torch.sigmoid(out[:, -1:])
            least_used = F.one_hot(state["usage"].argmin(-1), self.slots).to(u.dtype)
            w = gate * state["read"] + (1 - gate) * least_used                        # (B, K)
            new["keys"] = state["keys"] * (1 - w[..., None]) + w[..., None] * key[:, None]
            new["values"] = state["values"] * (1 - w[..., None]) + w[..., None] * value[:, None]
            new["usage"] = state["usage"] + w.detach()
        new["h"], new["c"] = self.cell(torch.cat([u, prev_label], -1), (state["h"], state["c"]))
        if not self.memory:
            return new, self.head(new["h"])
        out = self.read_key(torch.cat([new["h"], u], -1))
        new["query"], beta = out[:, :-1], 1 + F.softplus(out[:, -1:])
        if self.addressing == "unit":                 # the query — and so the key it is written under — has norm 1
            new["query"] = F.normalize(new["query"], dim=-1, eps=1e-6)
        new["read"] = torch.softmax(beta * self.similarity(new["query"], new["keys"]), -1)
        new["usage"] = self.usage_decay * new["usage"] + new["read"].detach()
        r = (new["read"][..., None] * new["values"]).sum(1)
        return new, self.head(torch.cat([new["h"], r], -1))

    def similarity(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """(B, K) scores of the slots' keys (B, K, d) for the query (B, d). ``cosine``: cos(q, M^key_i), whose
        gradient wrt a key grows as 1/‖M^key_i‖ — large for the slots a write has barely touched. ``unit``: the
        plain dot product q·M^key_i with q of norm 1 (normalised when it is made, so every key is written as a unit
        vector): no division by a key's norm, the gradient wrt a key is β‖q‖ = β at most whatever its norm; a slot
        holding one whole key scores its cosine to the query, a slot written with weight w about w times that."""
        if self.addressing == "cosine":
            return F.cosine_similarity(query[:, None], keys, dim=-1, eps=1e-6)
        return (query[:, None] * keys).sum(-1)


class StateSynthesizer(nn.Module):
    """Predicts the future gradient at a chunk boundary (zero at initialisation): one MLP on the episode's vectors
    [h; c; query] for their gradients, and — `state` "all" — one MLP shared by the slots on [key_i; value_i; read_i;
    h] for the memory's. `state` "controller": the controller's part only (DNI for RNNs synthesises the core
    state's gradient, Jaderberg et al. §3.1); the memory tensors then get no synthetic gradient, as in bp."""

    def __init__(self, model: EpisodicNMN, hidden: int = 128, state: str = "all"):
        super().__init__()
        if state not in SYNTH_STATES:
            raise ValueError(f"state: {state!r}; one of {SYNTH_STATES}")
        h, k, v = model.hidden, model.key_dim, model.value_dim
        self.sizes = {"h": h, "c": h, **({"query": k} if model.memory else {})}
        width = sum(self.sizes.values())
        self.controller = mlp([width, hidden, width])
        self.slot = mlp([k + v + 1 + h, hidden, k + v + 1]) if model.memory and state == "all" else None
        self.dims = (k, v)
        for net in (self.controller, self.slot):
            if net is not None:
                nn.init.zeros_(net[-1].weight)
                nn.init.zeros_(net[-1].bias)

    def forward(self, state: dict) -> dict[str, torch.Tensor]:
        g = self.controller(torch.cat([state[k].detach() for k in self.sizes], -1))
        out = dict(zip(self.sizes, torch.split(g, list(self.sizes.values()), -1)))
        if self.slot is not None:
            k, v = self.dims
            h = state["h"].detach()
            slots = torch.cat([state["keys"].detach(), state["values"].detach(), state["read"].detach()[..., None],
                               h[:, None].expand(-1, state["keys"].shape[1], -1)], -1)
            s = self.slot(slots)
            out.update(keys=s[..., :k], values=s[..., k:k + v], read=s[..., -1])
        return out

    def names(self) -> list[str]:
        """The state tensors it predicts, in `STATE` order."""
        return [*self.sizes, *(("keys", "values", "read") if self.slot is not None else ())]


def carried(state: dict) -> list[str]:
    return [name for name in STATE if name in state]


class Trainer:
    """One of METHODS on an `EpisodicNMN`: fast controllers, slow encoder/head, synthesizers for sg."""

    def __init__(self, model: EpisodicNMN, *, method: str, kind: str, lr: float, fast_lr_ratio: float,
                 truncation: int, synth_lr: float = 1e-3, clip: float = 10.0, optimizer: str = "adam",
                 momentum: float = 0.0, synth_state: str = "all"):
        if method not in METHODS:
            raise ValueError(f"method: {method!r}; one of {METHODS}")
        self.model, self.method, self.kind, self.clip = model, method, kind, clip
        self.truncation = truncation if method in ("sg", "bp") else None
        make = (lambda params, lr_: torch.optim.Adam(params, lr=lr_)) if optimizer == "adam" else \
            (lambda params, lr_: torch.optim.SGD(params, lr=lr_, momentum=momentum))
        self.fast = make(model.controller_parameters(), fast_lr_ratio * lr)
        self.slow = make(model.slow_parameters(), lr)
        self.synth = StateSynthesizer(model, state=synth_state) if method == "sg" else None
        self.synth_opt = torch.optim.Adam(self.synth.parameters(), lr=synth_lr) if self.synth else None
        self.synth_fit: list[float] = []           # cosine of S to its (bootstrapped) training target

    # ------------------------------------------------------------------ pieces
    def step_losses(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-episode loss of one step, (B,)."""
        if self.kind == "classification":
            return F.cross_entropy(logits, target, reduction="none")
        return F.mse_loss(logits, target, reduction="none").squeeze(-1)

    def prev_labels(self, y: torch.Tensor, n_out: int) -> torch.Tensor:
        """(B, T, label_dim): y_{t−1} one-hot (zeros at t = 0), or the previous value for regression."""
        prev = F.one_hot(y, n_out).float() if self.kind == "classification" else y
        return torch.cat([torch.zeros_like(prev[:, :1]), prev[:, :-1]], 1)

    def unroll(self, state, u, prev, y, start: int, stop: int, boundaries=()):
        """Steps start..stop−1 from `state`; (state, per-step losses (B, n), predictions, boundary states)."""
        losses, preds, kept = [], [], {}
        for t in range(start, stop):
            if t in boundaries:
                state = dict(state)
                for name in carried(state):
                    state[name] = state[name] + torch.zeros_like(state[name], requires_grad=True)
                kept[t] = state
            state, out = self.model.step(state, u[:, t], prev[:, t], first=t == 0)
            losses.append(self.step_losses(out, y[:, t]))
            preds.append(out.detach())
        return state, torch.stack(losses, 1), torch.stack(preds, 1), kept

    def _clip_step(self, optimizer, parameters):
        nn.utils.clip_grad_norm_(list(parameters), self.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ training
    def train_batch(self, episodes) -> float:
        model, (B, T) = self.model, episodes.presentation.shape
        n_out = model.head.out_features
        prev = self.prev_labels(episodes.y, n_out)
        self.slow.zero_grad(set_to_none=True)
        self.fast.zero_grad(set_to_none=True)
        chunk = self.truncation or T
        self._T = T
        encoded = model.encoder(episodes.x)                      # the slow encoder, once per episode
        u = encoded.detach().requires_grad_(True)                # chunks send their gradients here
        state, total, pending = model.initial_state(B), 0.0, None    # pending: the last boundary's state
        for start in range(0, T, chunk):
            stop = min(T, start + chunk)
            state = {k: (v.detach().requires_grad_(k in carried(state) and start > 0)) for k, v in state.items()}
            end, losses, _, _ = self.unroll(state, u, prev, episodes.y, start, stop)
            loss = losses.sum(1).mean() / T
            objective, synthetic = loss, None
            if self.synth is not None and stop < T:
                synthetic = self.synth(end)
                objective = objective + sum((end[k] * synthetic[k].detach()).sum() for k in synthetic) / (B * T)
            objective.backward()
            total += float(loss.detach())
            if self.synth is not None and pending is not None:
                self._fit_synthesizer(pending, state)
            pending = {k: v.detach() for k, v in end.items()} if synthetic is not None else None
            if self.truncation:                                       # fast: the controllers step after each chunk
                self._clip_step(self.fast, model.controller_parameters())
            state = end
        if not self.truncation:
            self._clip_step(self.fast, model.controller_parameters())
        encoded.backward(u.grad)
        self._clip_step(self.slow, model.slow_parameters())            # slow: once per episode
        return total

    def _fit_synthesizer(self, boundary: dict, chunk_start: dict) -> None:
        """Regress S(previous boundary) on the gradient that reached this chunk's start (bootstrapped target),
        in per-episode loss units: ∂(Σ_t L_t of one episode)/∂state = B·T·∂(mean loss / T)/∂state. The target
        carries the guesses S made at this chunk's end, and only those: with synth_state "controller", no memory
        tensor's guess enters it, and the memory tensors are not regressed on."""
        B = chunk_start["h"].shape[0]
        prediction = self.synth(boundary)
        names = [k for k in prediction if chunk_start[k].grad is not None]
        target = {k: chunk_start[k].grad * (B * self._T) for k in names}
        self.synth_opt.zero_grad(set_to_none=True)
        sum(F.mse_loss(prediction[k], target[k], reduction="sum") for k in names).div(B).backward()
        nn.utils.clip_grad_norm_(list(self.synth.parameters()), self.clip)
        self.synth_opt.step()
        flat = lambda d: torch.cat([d[k].detach().flatten() for k in names])  # noqa: E731
        self.synth_fit.append(float(F.cosine_similarity(flat(prediction), flat(target), dim=0)))

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict(self, episodes) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-step losses (B, T), predictions) with no weight change: the memory is the only thing that learns."""
        model, (B, T) = self.model, episodes.presentation.shape
        prev = self.prev_labels(episodes.y, model.head.out_features)
        u = model.encoder(episodes.x)
        _, losses, preds, _ = self.unroll(model.initial_state(B), u, prev, episodes.y, 0, T)
        return losses, preds

    def probe_cosine(self, episodes) -> dict[str, float]:
        """Cosine between S(state) and the true future gradient (full backprop) at every chunk boundary, per
        synthesised tensor and over all of them ("all"). Only the tensors S predicts count: with synth_state
        "controller", "all" is over h, c and query — the memory tensors get no synthetic gradient to judge."""
        if self.synth is None:
            return {}
        model, (B, T) = self.model, episodes.presentation.shape
        prev = self.prev_labels(episodes.y, model.head.out_features)
        boundaries = set(range(self.truncation, T, self.truncation))
        u = model.encoder(episodes.x).detach()
        _, losses, _, kept = self.unroll(model.initial_state(B), u, prev, episodes.y, 0, T, boundaries)
        names = self.synth.names()
        states = [kept[t][k] for t in sorted(kept) for k in names]
        true = iter(torch.autograd.grad(losses.sum(), states, allow_unused=True))   # per-episode units already
        parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {k: [] for k in names}
        for t in sorted(kept):
            guess = self.synth(kept[t])
            for k in names:
                g = next(true)
                g = g if g is not None else torch.zeros_like(kept[t][k])
                parts[k].append((guess[k].detach().flatten(), g.flatten()))
        cosine = lambda pairs: float(F.cosine_similarity(torch.cat([p for p, _ in pairs]),  # noqa: E731
                                                         torch.cat([g for _, g in pairs]), dim=0))
        return {"all": cosine([pair for k in names for pair in parts[k]]), **{k: cosine(parts[k]) for k in names}}


def presentation_scores(episodes, losses: torch.Tensor, preds: torch.Tensor, kind: str,
                        presentations=(1, 2, 5, 10)) -> dict[str, float]:
    """Accuracy (classification) or MSE (regression) at the k-th presentation of a class, and overall."""
    if kind == "classification":
        correct = (preds.argmax(-1) == episodes.y).float()
        out = {f"acc_p{k}": float(correct[episodes.presentation == k].mean()) for k in presentations
               if (episodes.presentation == k).any()}
        out["acc"] = float(correct.mean())
        out["acc_after_first"] = float(correct[episodes.presentation > 1].mean())
        if episodes.scored is not None:
            out["rare_acc_second"] = float(correct[episodes.scored].mean())
        return out
    err = losses
    out = {f"mse_p{k}": float(err[episodes.presentation == k].mean()) for k in presentations
           if (episodes.presentation == k).any()}
    out["mse"] = float(err.mean())
    return out


def future_gradient_agreement(trainer: Trainer, episodes, boundary: int, source, seed: int = 0,
                              names=None) -> dict[str, float]:
    """How much of the future gradient at a boundary the state there determines — the synthesizers' ceiling.

    The same episodes twice: as they are, and with another future after `boundary` (`source.resample_future`: the
    same task, the same state at the boundary, the remaining labels reordered and fresh images). Returns the cosine
    between the two true future gradients, over the state tensors `names` ("all"; default: every carried tensor)
    and per tensor. If g = μ(state) + noise, E cos(g_A, g_B) ≈ |μ|²/E|g|², and no synthesizer — which sees only the
    state — can point at g better than about √ of that (its best guess is μ)."""
    model, (B, T) = trainer.model, episodes.presentation.shape
    n_out = model.head.out_features
    names = list(names or carried(model.initial_state(B)))
    futures = []
    for ep in (episodes, source.resample_future(episodes, boundary, np.random.default_rng(seed))):
        _, losses, _, kept = trainer.unroll(model.initial_state(B), model.encoder(ep.x).detach(),
                                            trainer.prev_labels(ep.y, n_out), ep.y, 0, T, {boundary})
        grads = torch.autograd.grad(losses[:, boundary:].sum(), [kept[boundary][k] for k in names],
                                    allow_unused=True)
        futures.append({k: (g if g is not None else torch.zeros_like(kept[boundary][k])).flatten()
                        for k, g in zip(names, grads)})
    a, b = futures
    out = {"all": float(F.cosine_similarity(torch.cat(list(a.values())), torch.cat(list(b.values())), dim=0))}
    out.update({k: float(F.cosine_similarity(a[k], b[k], dim=0)) for k in a})
    return out


def set_seed(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- the registered experiment

EVAL_SEEDS = {"val": 10_001, "test": 10_002, "rare": 10_003, "probe": 10_004}   # the same episodes for every run


def build_task(params):
    """(train, val, test) episode sources, the kind, the output size and the label input size."""
    from strategies.nmn_episodes import SinusoidEpisodes, image_splits

    if params.task == "sinusoid":
        source = SinusoidEpisodes(length=params.length)
        return source, source, source, "regression", 1, 1
    train, val, test = image_splits(params.task, meta_test_classes=params.meta_test_classes, n_way=params.n_way,
                                    length=params.length, data_root=params.data_root, rotations=params.rotations)
    return train, val, test, "classification", params.n_way, params.n_way


def evaluate(trainer: Trainer, source, n: int, seed: int, kind: str, *, rare: bool = False,
             batch: int = 64) -> dict[str, float]:
    """Scores over `n` fixed episodes (weights frozen: whatever is learnt within an episode is in the memory)."""
    rng = np.random.default_rng(seed)
    sums: dict[str, list[float]] = {}
    for start in range(0, n, batch):
        episodes = source.sample(min(batch, n - start), rng, rare=rare)
        losses, preds = trainer.predict(episodes)
        for k, v in presentation_scores(episodes, losses, preds, kind).items():
            sums.setdefault(k, []).append(v * len(episodes.y))
    return {k: sum(v) / n for k, v in sums.items()}


def run(ctx, params) -> dict[str, float]:
    """Meta-train `params.method` on episodes, then score validation and meta-test episodes (see module docstring).

    Logged: ``train/loss`` and (sg) ``synth/cos`` per probe; final test scores by presentation (``acc_p1``...,
    ``mse_p1``...), the same on validation episodes (``val_…``), the rare variant's second showing
    (``rare_acc_second``), ``synth_cos`` (mean of the probes over the last half of training; sg only) and
    ``synth_cos_<state>`` per state tensor, parameter counts; artifact ``nmn/episodic.json``."""
    import json
    import time

    started = time.time()
    rng = set_seed(ctx.seed)
    train, val, test, kind, n_out, label_dim = build_task(params)
    model = EpisodicNMN.for_params(params, train.input_dim, n_out, label_dim)
    trainer = Trainer(model, method=params.method, kind=kind, lr=ctx.train.lr, fast_lr_ratio=params.fast_lr_ratio,
                      truncation=params.truncation, synth_lr=params.synth_lr, optimizer=ctx.train.optimizer,
                      momentum=ctx.train.momentum, synth_state=params.synth_state)
    batch = ctx.train.batch_size
    probe = val.sample(batch, np.random.default_rng(EVAL_SEEDS["probe"]))
    probes: list[tuple[int, dict]] = []
    for update in range(params.updates):
        loss = trainer.train_batch(train.sample(batch, rng))
        done = update + 1
        if done % params.probe_every == 0 or done == params.updates:
            ctx.runlog.log_metrics({"train/loss": loss}, step=done)
            if trainer.synth is not None:
                cos = trainer.probe_cosine(probe)
                probes.append((done, cos))
                ctx.runlog.log_metrics({f"synth/cos_{k}": v for k, v in cos.items()}, step=done)
            ctx.runlog.progress(done, params.updates, "meta-training")
    metrics = evaluate(trainer, test, params.eval_episodes, EVAL_SEEDS["test"], kind)
    metrics.update({f"val_{k}": v for k, v in
                    evaluate(trainer, val, params.eval_episodes, EVAL_SEEDS["val"], kind).items()})
    if kind == "classification":
        rare = evaluate(trainer, test, params.eval_episodes, EVAL_SEEDS["rare"], kind, rare=True)
        metrics["rare_acc_second"] = rare["rare_acc_second"]
    late = [cos for step, cos in probes if step > params.updates / 2] or [cos for _, cos in probes]
    if late:
        for key in late[0]:
            metrics["synth_cos" + ("" if key == "all" else f"_{key}")] = float(np.mean([c[key] for c in late]))
        metrics["synth_fit_cos"] = float(np.mean(trainer.synth_fit[-50:])) if trainer.synth_fit else float("nan")
    metrics["controller_params"] = sum(p.numel() for p in model.controller_parameters())
    metrics["total_params"] = sum(p.numel() for p in model.parameters())
    metrics["train_seconds"] = time.time() - started
    ctx.runlog.log_artifact("nmn/episodic.json", json.dumps(
        {"probes": [{"update": s, **c} for s, c in probes], "synth_fit_cos": trainer.synth_fit[-200:],
         "metrics": metrics}, indent=1).encode())
    return metrics
