"""Neural memory networks whose controllers learn fast and slow through synthetic gradients — class-incremental.

**Retired** (issue 28): in this class-incremental form the memory holds only the last task, so the
strategies `nmn_sg` / `nmn_bp` stay registered only so that the published grid experiments/nmn_mnist.yaml
still runs; their claims are gone from the reproduction report. Measured by benchmarks/nmn_ci_probe.py
(Split digits, the defaults below): every one of the 128 slots is rewritten within 4 minibatches (each
minibatch writes 32 samples into 32 least-used slots), 100% of the slots were last written during the
final experience, and the old tasks end at 0%. Besides, the head reads the encoder directly (below), so
the memory cannot matter; ``fast_lr_factor`` 0.1 makes the "fast" controllers ten times slower than the
rest; and the synthesizers' cosine to the true gradient was 0.007–0.035 in all 9 archived runs. The NMN is
now measured where the paper claims it, on episodes: `strategies.nmn_episodic` (transfer ``nmn_episodic``),
which reuses nothing of this module's training procedure.

Measured by benchmarks/nmn.py (grid experiments/nmn_mnist.yaml; rare-class accuracy comes from
the runner's per-class accounting on `rare_class_stream`, see cl.runner).

Fernando, Denman, Sridharan, Fookes. "Fast & Slow Learning: Incorporating Synthetic Gradients
in Neural Memory Controllers" (arXiv 2011.05438, 2020). The paper gives the idea — controllers
of a neural memory network (NMN) updated fast from synthetic gradients (decoupled neural
interfaces, Jaderberg et al. 2017), the rest slowly from true gradients — but no code and no
architecture details. Everything below is **our design**; each choice the paper leaves open
is marked (*open*).

Our design, section by section
-------------------------------
*Model* (`NMN`). Encoder e(x) = u: the configured model's feature extractor. Memory
M ∈ R^{K×d} with usage statistics, carried across minibatches and experiences (a buffer, not
a parameter). Read controller: a GRU cell over u with a stream state s_r (the mean of the
last minibatch's states, detached) — h_r = GRU(u, s_r); query q = W_q h_r; content
addressing a = softmax(M q / √d); read r = aᵀM; output head on [u; h_r; r] (*open*: the head's
input; with the encoding beside the controller state it learns as fast as a plain classifier —
measured on 5 digit classes, 42 SGD steps: 90 % with u, 39 % on [h_r; r] alone). Write controller: a GRU cell over [h_r; r; E(y)] with its own stream state → h_w;
erase e = σ(W_e h_w), add v = tanh(W_v h_w), gate g = σ(w_g·h_w); write weights
w = g·a + (1 − g)·1[least-used slot] (MANN's least-recently-used access, Santoro et al. 2016);
M ← M ⊙ (1 − Σ_b w_bᵀe_b) + Σ_b w_bᵀv_b, each sample of a minibatch taking a different
least-used slot (*open*: batched writes). Usage u ← γu + Σ_b (a_b + w_b).

*Synthesizers*. S_read(o_r, y), S_write(o_w, y): two-layer MLPs on [o; one-hot(y)] that
predict ∂L/∂o for each controller's output — o_r = [h_r; q] and o_w = [e; v; g; h_w], so that
every path from a controller's parameters to the loss runs through its output, as DNI
requires (conditional DNI, cDNI); last layer zero-initialised so they start silent
(as in Jaderberg et al.). ``shared_synthesizer`` uses one synthesizer for both controllers
(over the concatenated state), the paper's "shared feedback path".

The gradient of the loss at a controller state splits in two (the DNI view): the *immediate*
part, through this minibatch's own prediction, available at once; and the *future* part,
through the memory this minibatch writes and later minibatches read — available only by
waiting and back-propagating through time.

*Every minibatch* (both variants). The minibatch is read and classified; the immediate loss's
true gradient updates everything on the input→output path — encoder, read controller, query,
output head — with the run's optimiser at ``train.lr`` (*open*: the paper's slow rate; we use
the run's own). Then the minibatch is written to memory.

*Fast path* (``nmn_sg``, every minibatch). The controllers also step on the *synthetic*
future gradient: the gradient of Σ⟨h, S(h)⟩ w.r.t. their parameters is Jᵀ S(h), the update
backprop would make if S(h) were the future part of ∂L/∂h — SGD at ``fast_lr_factor ×
train.lr``, without waiting.

*Slow path* (every ``slow_every`` minibatches, and at each experience end). The episode (the
minibatches since the last slow step) is replayed from the memory as it was at its start, with
differentiable writes; the true loss (sum over the episode of each minibatch's mean
cross-entropy) is back-propagated through it, and each state's future gradient is the total
minus its own minibatch's immediate part (the last minibatch of an episode has no future
within it and is skipped). ``nmn_sg``: the synthesizers regress these true future gradients
(‖S(h) − g_future‖², Adam at ``synth_lr``). ``nmn_bp`` (the baseline, synthetic gradients
off): the controllers step on them at ``train.lr`` — truncated backprop through the episode,
the plain NMN. The memory is the one written minibatch by minibatch; the replay only
computes gradients.

Reported: ``persistent_state_bytes`` (memory, usage, stream states); the synthesizers'
gradient-prediction quality (cosine similarity between S(h) and ∂L/∂h at every slow step,
as an artifact ``nmn/synthesizer.json`` with its mean).
"""
from __future__ import annotations

import json
import math

import torch
from torch import nn
from torch.nn import functional as F

from cl.strategy_api import StrategyContext


# --------------------------------------------------------------------------- memory operations

def content_addressing(memory: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """a = softmax(M q / √d): (B, K) read weights for queries (B, d) over memory (K, d)."""
    return torch.softmax(query @ memory.T / math.sqrt(memory.shape[1]), dim=-1)


def least_used_slots(usage: torch.Tensor, n: int) -> torch.Tensor:
    """The n slots with the smallest usage, least used first (ties: lower index)."""
    order = torch.sort(usage, stable=True).indices
    return order[:n] if n <= len(order) else order[torch.arange(n) % len(order)]


def write_memory(memory: torch.Tensor, weights: torch.Tensor, erase: torch.Tensor, add: torch.Tensor
                 ) -> torch.Tensor:
    """M ⊙ (1 − Σ_b w_bᵀ e_b) + Σ_b w_bᵀ v_b, erase clamped so a slot is never over-erased."""
    erase_total = (weights.T @ erase).clamp(max=1.0)           # (K, d)
    return memory * (1 - erase_total) + weights.T @ add


# --------------------------------------------------------------------------- the network

class Synthesizer(nn.Module):
    """cDNI: predicts ∂L/∂h from the state h and the label (zero output at init)."""

    def __init__(self, width: int, n_classes: int, hidden: int = 128):
        super().__init__()
        self.n_classes = n_classes
        self.net = nn.Sequential(nn.Linear(width + n_classes, hidden), nn.ReLU(), nn.Linear(hidden, width))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([h, F.one_hot(y, self.n_classes).to(h.dtype)], dim=-1))


class NMN(nn.Module):
    """Encoder + external memory + read/write controllers + synthesizers (see the module docstring)."""

    def __init__(self, encoder: nn.Module, feature_dim: int, n_classes: int, *, slots: int = 128, width: int = 256,
                 label_dim: int = 32, usage_decay: float = 0.95, shared_synthesizer: bool = False):
        super().__init__()
        self.encoder = encoder
        self.width = width
        self.usage_decay = usage_decay
        self.read_cell = nn.GRUCell(feature_dim, width)
        self.query = nn.Linear(width, width)
        self.head = nn.Linear(feature_dim + 2 * width, n_classes)
        self.label_embedding = nn.Embedding(n_classes, label_dim)
        self.write_cell = nn.GRUCell(2 * width + label_dim, width)
        self.erase = nn.Linear(width, width)
        self.add = nn.Linear(width, width)
        self.gate = nn.Linear(width, 1)
        self.shared_synthesizer = shared_synthesizer
        self.read_out, self.write_out = 2 * width, 3 * width + 1      # sizes of o_r and o_w
        if shared_synthesizer:
            self.synth = nn.ModuleDict({"shared": Synthesizer(self.read_out + self.write_out, n_classes)})
        else:
            self.synth = nn.ModuleDict({"read": Synthesizer(self.read_out, n_classes),
                                        "write": Synthesizer(self.write_out, n_classes)})
        self.register_buffer("memory", torch.full((slots, width), 1e-6))
        self.register_buffer("usage", torch.zeros(slots))
        self.register_buffer("read_state", torch.zeros(1, width))
        self.register_buffer("write_state", torch.zeros(1, width))

    # parameter groups
    def controller_parameters(self):
        for module in (self.read_cell, self.query, self.write_cell, self.erase, self.add, self.gate,
                       self.label_embedding):
            yield from module.parameters()

    def slow_parameters(self):
        """Everything on the input→output path: trained on the immediate loss every minibatch."""
        for module in (self.encoder, self.read_cell, self.query, self.head):
            yield from module.parameters()

    # forward pieces
    def read(self, u: torch.Tensor, memory: torch.Tensor, state: torch.Tensor | None = None):
        """(read controller output o_r = [h_r; q], read weights a, read vector r)."""
        state = self.read_state if state is None else state
        h_r = self.read_cell(u, state.expand(len(u), -1))
        q = self.query(h_r)
        o_r = torch.cat([h_r, q], dim=-1)
        a = content_addressing(memory, o_r[:, self.width:])
        return o_r, a, a @ memory

    def logits(self, u: torch.Tensor, o_r: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """The output head on [u; h_r; r]: the encoding, the read controller's state, the memory read."""
        return self.head(torch.cat([u, o_r[:, : self.width], r], dim=-1))

    def write_ops(self, o_r, r, a, y, state: torch.Tensor | None = None, usage: torch.Tensor | None = None):
        """(write controller output o_w = [e; v; g; h_w], write weights, erase e, add v)."""
        state = self.write_state if state is None else state
        usage = self.usage if usage is None else usage
        h_w = self.write_cell(torch.cat([o_r[:, : self.width], r, self.label_embedding(y)], dim=-1),
                              state.expand(len(y), -1))
        o_w = torch.cat([torch.sigmoid(self.erase(h_w)), torch.tanh(self.add(h_w)), torch.sigmoid(self.gate(h_w)),
                         h_w], dim=-1)
        d = self.width
        erase, add, gate = o_w[:, :d], o_w[:, d:2 * d], o_w[:, 2 * d:2 * d + 1]
        lu = F.one_hot(least_used_slots(usage, len(y)), self.memory.shape[0]).to(a.dtype)
        return o_w, gate * a + (1 - gate) * lu, erase, add

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluation: read only (the label is unknown, nothing is written)."""
        u = self.encoder(x)
        o_r, _, r = self.read(u, self.memory)
        return self.logits(u, o_r, r)

    @torch.no_grad()
    def commit(self, o_r, o_w, a, weights, erase, add) -> None:
        """Write one minibatch to memory and move the usage and stream states on."""
        self.memory.copy_(write_memory(self.memory, weights.detach(), erase.detach(), add.detach()))
        self.usage.mul_(self.usage_decay).add_((a.detach() + weights.detach()).sum(0))
        self.read_state.copy_(o_r[:, : self.width].detach().mean(0, keepdim=True))
        self.write_state.copy_(o_w[:, -self.width:].detach().mean(0, keepdim=True))

    def synthetic_gradients(self, h_r, h_w, y):
        if self.shared_synthesizer:
            both = self.synth["shared"](torch.cat([h_r, h_w], dim=-1), y)
            return both[:, : self.read_out], both[:, self.read_out:]
        return self.synth["read"](h_r, y), self.synth["write"](h_w, y)


def controller_step(optimizer: torch.optim.Optimizer, parameters, states, gradients) -> None:
    """One optimiser step of `parameters` on given ∂L/∂h: the gradient of Σ⟨h, g⟩ is Jᵀg,
    what backprop would give if g were the true gradient of the loss at the states h."""
    parameters = list(parameters)
    surrogate = sum((h * g.detach()).sum() for h, g in zip(states, gradients))
    grads = torch.autograd.grad(surrogate, parameters, allow_unused=True, retain_graph=True)
    optimizer.zero_grad(set_to_none=True)
    for param, grad in zip(parameters, grads):
        param.grad = grad
    optimizer.step()


# --------------------------------------------------------------------------- the training procedure

def _template_class():
    from avalanche.training.templates import SupervisedTemplate

    class NMNTemplate(SupervisedTemplate):
        """Avalanche template whose training iteration is the fast/slow procedure of the module docstring."""

        def __init__(self, *, model: NMN, synthetic: bool, slow_every: int, fast_lr: float, synth_lr: float,
                     **kwargs):
            super().__init__(model=model, **kwargs)
            self.synthetic = synthetic
            self.slow_every = slow_every
            self.fast_optimizer = torch.optim.SGD(model.controller_parameters(), lr=fast_lr)
            self.controller_optimizer = torch.optim.SGD(model.controller_parameters(),
                                                        lr=self.optimizer.defaults["lr"])   # nmn_bp's slow updates
            self.synth_optimizer = torch.optim.Adam(model.synth.parameters(), lr=synth_lr)
            self.episode: list[tuple[torch.Tensor, torch.Tensor]] = []
            self.snapshot = None
            self.cosines: list[float] = []
            self.slow_steps = 0
            self.replayed = 0                   # minibatches re-run by slow steps
            self.slow_flops_per_minibatch = None

        # Avalanche would put every model parameter in self.optimizer: keep it on the slow group
        def make_optimizer(self, **kwargs):
            if getattr(self, "_slow_group_set", False):
                return
            params = list(self.model.slow_parameters())
            self.optimizer.param_groups.clear()
            self.optimizer.state.clear()
            self.optimizer.add_param_group({"params": params})
            self._slow_group_set = True

        def training_epoch(self, **kwargs):
            for self.mbatch in self.dataloader:
                if self._stop_training:
                    break
                self._unpack_minibatch()
                self._before_training_iteration(**kwargs)
                self._before_forward(**kwargs)
                self.loss = self.fast_step(self.mb_x, self.mb_y)
                self._after_forward(**kwargs)
                self._before_backward(**kwargs)
                self._after_backward(**kwargs)
                self._before_update(**kwargs)
                if len(self.episode) >= self.slow_every:   # outside the FLOP meter's window: counted apart
                    self.slow_step()
                self._after_update(**kwargs)
                self._after_training_iteration(**kwargs)

        def _after_training_exp(self, **kwargs):
            if self.episode:
                self.slow_step()                     # an experience never ends with untrained minibatches
            super()._after_training_exp(**kwargs)

        def fast_step(self, x, y) -> torch.Tensor:
            """Encoder and head on the immediate loss; controllers on synthetic gradients (nmn_sg); write."""
            model: NMN = self.model
            if not self.episode:
                self.snapshot = {k: getattr(model, k).clone() for k in ("memory", "usage", "read_state",
                                                                        "write_state")}
            self.episode.append((x, y))
            with torch.enable_grad():
                u = model.encoder(x)
                h_r, a, r = model.read(u, model.memory)
                # the write controller's output from detached inputs: its own Jacobian in the fast update
                h_w, weights, erase, add = model.write_ops(h_r.detach(), r.detach(), a.detach(), y)
                loss = F.cross_entropy(model.logits(u, h_r, r), y)
                slow = list(model.slow_parameters())
                grads = torch.autograd.grad(loss, slow, retain_graph=self.synthetic, allow_unused=True)
                if self.synthetic:
                    with torch.no_grad():
                        g_r, g_w = model.synthetic_gradients(h_r.detach(), h_w.detach(), y)
                    controller_step(self.fast_optimizer, model.controller_parameters(), (h_r, h_w), (g_r, g_w))
            self.optimizer.zero_grad(set_to_none=True)
            for param, grad in zip(slow, grads):
                param.grad = grad
            self.optimizer.step()
            model.commit(h_r, h_w, a, weights, erase, add)
            return loss.detach()

        def slow_step(self) -> None:
            """True loss through the episode from its starting memory; slow parameters and synthesizers step."""
            if self.slow_flops_per_minibatch is None:       # measured once, on the first slow step
                from cl.cost import FlopCounter

                counter, n = FlopCounter(), len(self.episode)
                counter.start()
                try:
                    self._slow_step()
                finally:
                    self.slow_flops_per_minibatch = counter.stop() / n
                self.replayed += n
                return
            self.replayed += len(self.episode)
            self._slow_step()

        def extra_train_flops(self) -> float:
            """The slow path's FLOPs (the FLOP meter sees only the fast path's iteration)."""
            return (self.slow_flops_per_minibatch or 0.0) * self.replayed

        def _slow_step(self) -> None:
            model: NMN = self.model
            memory, usage = self.snapshot["memory"], self.snapshot["usage"]
            s_r, s_w = self.snapshot["read_state"], self.snapshot["write_state"]
            states, labels, losses = [], [], []
            for x, y in self.episode:
                with torch.no_grad():
                    u = model.encoder(x)                           # the encoder learns from the immediate loss
                h_r, a, r = model.read(u, memory, s_r)
                h_w, weights, erase, add = model.write_ops(h_r, r, a, y, s_w, usage)
                losses.append(F.cross_entropy(model.logits(u, h_r, r), y))
                memory = write_memory(memory, weights, erase, add)      # differentiable within the episode
                usage = model.usage_decay * usage + (a + weights).detach().sum(0)
                s_r = h_r[:, : model.width].detach().mean(0, keepdim=True)
                s_w = h_w[:, -model.width:].detach().mean(0, keepdim=True)
                states.append((h_r, h_w))
                labels.append(y)
            flat = [h for pair in states for h in pair]
            total = torch.autograd.grad(torch.stack(losses).sum(), flat, retain_graph=True, allow_unused=True)
            futures = []
            for t, ((h_r, h_w), loss) in enumerate(zip(states, losses)):
                immediate = torch.autograd.grad(loss, h_r, retain_graph=True)[0]
                g_r = total[2 * t] if total[2 * t] is not None else torch.zeros_like(h_r)
                g_w = total[2 * t + 1] if total[2 * t + 1] is not None else torch.zeros_like(h_w)
                futures.append((g_r - immediate, g_w))
            pairs = [(s_, f, y) for s_, f, y in zip(states[:-1], futures[:-1], labels[:-1])]   # the last has none
            if pairs and self.synthetic:
                self._train_synthesizers(pairs)
            elif pairs:
                controller_step(self.controller_optimizer, model.controller_parameters(),
                                [h for (pair, _, _) in pairs for h in pair], [g for (_, f, _) in pairs for g in f])
            self.episode.clear()
            self.slow_steps += 1

        def _train_synthesizers(self, pairs) -> None:
            """Regress the true future gradients; record how well the predictions pointed (cosine)."""
            model: NMN = self.model
            self.synth_optimizer.zero_grad(set_to_none=True)
            losses, predicted, true = [], [], []
            for (h_r, h_w), (f_r, f_w), y in pairs:
                g_r, g_w = model.synthetic_gradients(h_r.detach(), h_w.detach(), y)
                losses.append(F.mse_loss(g_r, f_r.detach(), reduction="sum") +
                              F.mse_loss(g_w, f_w.detach(), reduction="sum"))
                predicted.append(torch.cat([g_r, g_w], 1).detach().flatten())
                true.append(torch.cat([f_r, f_w], 1).detach().flatten())
            torch.stack(losses).sum().backward()
            self.synth_optimizer.step()
            self.cosines.append(float(F.cosine_similarity(torch.cat(predicted), torch.cat(true), dim=0)))

        # reported by the runner
        def persistent_state_bytes(self) -> int:
            model: NMN = self.model
            return 4 * sum(b.numel() for b in (model.memory, model.usage, model.read_state, model.write_state))

        def artifacts(self) -> dict[str, bytes]:
            data = {"slow_steps": self.slow_steps, "cosine_per_slow_step": self.cosines,
                    "mean_cosine": sum(self.cosines) / len(self.cosines) if self.cosines else None}
            return {"nmn/synthesizer.json": json.dumps(data, indent=1).encode()}

    return NMNTemplate


def build_nmn(ctx: StrategyContext, params, synthetic: bool):
    if not hasattr(ctx.model, "features") or not hasattr(ctx.model, "feature_dim"):
        raise TypeError("nmn needs a model with a feature extractor (cl.models.ClassifierNet: mlp, cnn, resnet32...)")
    model = NMN(ctx.model.feature_extractor, ctx.model.feature_dim, ctx.scenario.n_classes, slots=params.slots,
                width=params.width, usage_decay=params.usage_decay,
                shared_synthesizer=params.shared_synthesizer).to(ctx.device)
    optimizer = type(ctx.optimizer)(model.slow_parameters(), **{k: v for k, v in ctx.optimizer.defaults.items()
                                                                  if k in ("lr", "momentum", "weight_decay")})
    template = _template_class()
    return template(model=model, synthetic=synthetic, slow_every=params.slow_every,
                    fast_lr=params.fast_lr_factor * ctx.train.lr, synth_lr=params.synth_lr,
                    optimizer=optimizer, criterion=ctx.criterion, **ctx.template_kwargs())


def build_nmn_sg(ctx: StrategyContext, params):
    return build_nmn(ctx, params, synthetic=True)


def build_nmn_bp(ctx: StrategyContext, params):
    return build_nmn(ctx, params, synthetic=False)
