"""Can a synthesizer learn the NMN's future gradient at all, given a fixed network and enough steps?

The sg runs (experiments/nmn_episodic*.yaml) fail the gate: their synthesizers end at cosine ≈ 0 to the true
future gradient, and at only 0.05–0.26 even to the (bootstrapped) targets they are trained on — after 150
updates, each fitting one target per chunk boundary while the network under them moves. Two explanations differ in
what would fix them: too few synthesizer steps on a moving target (budget), or a synthesizer that cannot predict
the gradient from what it sees (design). This separates them.

It trains the episodic NMN with truncated backprop (``bp``, the grid's settings) for ``--pretrain`` updates,
freezes it, and fits two fresh synthesizers (`StateSynthesizer`, Adam at the grid's synth lr) on fresh training
episodes for ``--steps`` steps:

* **bootstrapped** — what sg trains on: at each chunk boundary, the gradient that reaches the next chunk's start
  through that chunk's own losses plus the synthesizer's guess at its end (Jaderberg et al. 2017, §3.1);
* **true future** — the best target there is: the full backprop of every later step's loss (an oracle sg cannot
  have during training; it bounds what this synthesizer can learn);
* **scaled** — the same target, each state tensor's error divided by its target's squared norm.

``--synth-state controller`` fits synthesizers of the controller's state only (h, c, query; sg's ``synth_state``):
the bootstrapped and the true-future one (no scaled one), probed and bounded over those tensors only. In the
parameter probe, the synthetic update is then compared with the update of the *whole* true future gradient, and
"oracle params" gives the cosine the true gradient of h, c and query alone reaches there (the best such a
synthesizer can do in parameter space).

Every ``--every`` steps both are probed on fixed validation episodes (the runs' probe: cosine to the true future
gradient over all boundaries and state tensors). Reading: the true-future synthesizer near the ceiling (image tasks:
√ of the agreement between two futures, benchmarks/nmn_gradient_ceiling.py) and the bootstrapped one below it →
the bootstrapping or its budget; both near zero → the synthesizer's inputs or architecture.

    python benchmarks/nmn_synth_capacity.py                          # sinusoid, 150 + 600 steps (~10 min, 1 core)
    python benchmarks/nmn_synth_capacity.py --task digits --length 50
    python benchmarks/nmn_synth_capacity.py --synth-state controller
    python benchmarks/nmn_synth_capacity.py --addressing unit      # keys written as unit vectors, dot-product read

It also prints the norm of the true future gradient per state tensor (what dominates the target) and, with
``--addressing unit``, measures all of this for the read without cosine's 1/‖key‖ factor.
"""
from __future__ import annotations

import argparse
import json
import time


def fit_on_true_future(trainer, episodes, scaled: bool = False) -> float:
    """One synthesizer step regressing S(state) at every chunk boundary on the true future gradient there; the
    cosine of the prediction to that target over the tensors it predicts (in per-episode units, as
    `Trainer._fit_synthesizer`). `scaled`: each
    state tensor's squared error divided by its target's squared norm, so that no tensor's scale drowns the
    others (the keys' gradient is 10–200× the rest's: cosine addressing divides by the norm of barely written
    keys)."""
    import torch
    from torch.nn import functional as F

    model, (B, T) = trainer.model, episodes.presentation.shape
    prev = trainer.prev_labels(episodes.y, model.head.out_features)
    boundaries = set(range(trainer.truncation, T, trainer.truncation))
    u = model.encoder(episodes.x).detach()
    _, losses, _, kept = trainer.unroll(model.initial_state(B), u, prev, episodes.y, 0, T, boundaries)
    names = trainer.synth.names()
    states = [(t, k) for t in sorted(kept) for k in names]
    grads = torch.autograd.grad(losses.sum(), [kept[t][k] for t, k in states], allow_unused=True)
    targets = {(t, k): (g if g is not None else torch.zeros_like(kept[t][k])).detach()
               for (t, k), g in zip(states, grads)}
    trainer.synth_opt.zero_grad(set_to_none=True)
    predicted, wanted, loss = [], [], 0.0
    for t in sorted(kept):
        guess = trainer.synth(kept[t])
        for k in names:
            error = F.mse_loss(guess[k], targets[t, k], reduction="sum")
            loss = loss + (error / targets[t, k].pow(2).sum().clamp_min(1e-12) * B if scaled else error)
            predicted.append(guess[k].detach().flatten())
            wanted.append(targets[t, k].flatten())
    (loss / B).backward()
    torch.nn.utils.clip_grad_norm_(list(trainer.synth.parameters()), trainer.clip)
    trainer.synth_opt.step()
    return float(F.cosine_similarity(torch.cat(predicted), torch.cat(wanted), dim=0))


def future_gradient_norms(trainer, episodes) -> dict[str, tuple[float, float]]:
    """Per carried state tensor: the norm of one episode's true future gradient (every later step's loss) at each
    chunk boundary, averaged over the episodes; (min, max) over the boundaries. What dominates the synthesizers'
    target: with cosine addressing the keys' (∝ 1/‖key‖ for barely written slots)."""
    import torch

    from strategies.nmn_episodic import carried

    model, (B, T) = trainer.model, episodes.presentation.shape
    prev = trainer.prev_labels(episodes.y, model.head.out_features)
    u = model.encoder(episodes.x).detach()
    boundaries = sorted(range(trainer.truncation, T, trainer.truncation))
    _, losses, _, kept = trainer.unroll(model.initial_state(B), u, prev, episodes.y, 0, T, set(boundaries))
    keys = [(t, k) for t in boundaries for k in carried(kept[t])]
    grads = torch.autograd.grad(losses.sum(), [kept[t][k] for t, k in keys], allow_unused=True)
    per = {}
    for (t, k), g in zip(keys, grads):
        norm = 0.0 if g is None else float(g.flatten(1).norm(dim=1).mean())
        per.setdefault(k, []).append(norm)
    return {k: (min(v), max(v)) for k, v in per.items()}


def parameter_cosine(trainer, episodes, guess: str = "synthesizer") -> float:
    """The gate that matters for the controllers: the cosine, over their parameters, between the update the
    synthetic gradients make and the one the true future gradients would make — each chunk unrolled from a
    detached start as sg trains, ⟨state at the chunk's end, S(state)⟩ against ⟨state, true future gradient⟩ (every
    carried tensor), summed over chunks. In place of S, over the tensors S predicts: `guess` "control", the true
    future gradients of the *other* episodes of the batch (rolled by one) — right in scale and kind, wrong in
    content: the cosine a guess that knows nothing of the episode gets, since the chunk's Jacobian can map
    unrelated gradients to similar parameter updates; "oracle", their own true future gradients — what a perfect
    synthesizer of those tensors would reach (1 when S predicts every tensor)."""
    import torch
    from torch.nn import functional as F

    from strategies.nmn_episodic import carried

    model, (B, T) = trainer.model, episodes.presentation.shape
    prev = trainer.prev_labels(episodes.y, model.head.out_features)
    u = model.encoder(episodes.x).detach()
    boundaries = set(range(trainer.truncation, T, trainer.truncation))
    _, losses, _, kept = trainer.unroll(model.initial_state(B), u, prev, episodes.y, 0, T, boundaries)
    keys = [(t, k) for t in sorted(kept) for k in carried(kept[t])]
    grads = torch.autograd.grad(losses.sum(), [kept[t][k] for t, k in keys], allow_unused=True)
    true = {(t, k): (g.detach() if g is not None else torch.zeros_like(kept[t][k])) for (t, k), g in zip(keys, grads)}
    params = list(model.controller_parameters())
    totals = {"synthetic": [torch.zeros_like(p) for p in params], "true": [torch.zeros_like(p) for p in params]}
    state = model.initial_state(B)
    for start in range(0, T, trainer.truncation):
        stop = min(T, start + trainer.truncation)
        end, _, _, _ = trainer.unroll({k: v.detach() for k, v in state.items()}, u, prev, episodes.y, start, stop)
        if stop < T:
            if guess == "synthesizer":
                synthetic = {k: v.detach() for k, v in trainer.synth(end).items()}
            else:
                synthetic = {k: torch.roll(true[stop, k], 1, dims=0) if guess == "control" else true[stop, k]
                             for k in trainer.synth.names()}
            for name, target in (("synthetic", synthetic),
                                 ("true", {k: true[stop, k] for k in carried(end)})):
                inner = sum((end[k] * target[k]).sum() for k in target)
                for total, g in zip(totals[name], torch.autograd.grad(inner, params, retain_graph=True,
                                                                       allow_unused=True)):
                    if g is not None:
                        total += g
        state = end
    flat = {name: torch.cat([t.flatten() for t in total]) for name, total in totals.items()}
    return float(F.cosine_similarity(flat["synthetic"], flat["true"], dim=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sinusoid", choices=("sinusoid", "digits"))
    parser.add_argument("--length", type=int, default=20, help="steps per episode (the grid: 20 sinusoid, 50 digits)")
    parser.add_argument("--pretrain", type=int, default=150, help="bp updates before the network is frozen")
    parser.add_argument("--steps", type=int, default=600, help="synthesizer steps per target")
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--synth-lr", type=float, default=1e-3)
    parser.add_argument("--synth-hidden", type=int, default=128, help="the synthesizers' hidden units (sg: 128)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--synth-state", default="all", choices=("all", "controller"),
                        help="the state synthesised (sg's synth_state): all of it, or h, c and query only")
    parser.add_argument("--addressing", default="cosine", choices=("cosine", "unit"),
                        help="the memory read (the runs' addressing): cosine, or unit keys and a plain dot product")
    args = parser.parse_args()

    import copy

    import numpy as np
    import torch

    from strategies.catalog import NMNEpisodicParams
    from strategies.nmn_episodic import (EVAL_SEEDS, EpisodicNMN, StateSynthesizer, Trainer, build_task,
                                         future_gradient_agreement)

    torch.set_num_threads(1)
    params = NMNEpisodicParams(task=args.task, method="bp", length=args.length, truncation=5, updates=args.pretrain,
                               addressing=args.addressing)
    train, val, _, kind, n_out, label_dim = build_task(params)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = EpisodicNMN.for_params(params, train.input_dim, n_out, label_dim)
    bp = Trainer(model, method="bp", kind=kind, lr=1e-3, fast_lr_ratio=1.0, truncation=params.truncation)
    started = time.time()
    for _ in range(args.pretrain):
        bp.train_batch(train.sample(16, rng))
    pretrain_s = time.time() - started
    frozen = copy.deepcopy(model.state_dict())

    # two synthesizers on the same frozen network; lr 0 for the network's optimisers keeps it frozen while the
    # bootstrapped one trains through sg's own `train_batch`
    targets = ("bootstrapped", "true future") + (("scaled",) if args.synth_state == "all" else ())
    trainers = {name: Trainer(model, method="sg", kind=kind, lr=0.0, fast_lr_ratio=1.0, truncation=params.truncation,
                              synth_lr=args.synth_lr, synth_state=args.synth_state) for name in targets}
    for trainer in trainers.values():          # the same fresh synthesizer for every target
        torch.manual_seed(args.seed + 1)
        trainer.synth = StateSynthesizer(model, hidden=args.synth_hidden, state=args.synth_state)
        trainer.synth_opt = torch.optim.Adam(trainer.synth.parameters(), lr=args.synth_lr)
    probe = val.sample(16, np.random.default_rng(EVAL_SEEDS["probe"]))
    synthesised = trainers["bootstrapped"].synth.names()
    agreements = [future_gradient_agreement(bp, probe, b, val, names=synthesised)
                  for b in range(params.truncation, args.length, params.truncation)]
    ceilings = {k: float(max(np.mean([a[k] for a in agreements]), 0.0) ** 0.5) for k in agreements[0]}
    ceiling = ceilings["all"]
    norms = future_gradient_norms(bp, probe)
    rows, fits = [], {name: [] for name in trainers}
    samplers = {name: np.random.default_rng(args.seed + 100 + i) for i, name in enumerate(trainers)}
    for step in range(args.steps + 1):
        if step % args.every == 0:
            rows.append({"step": step, **{name: tr.probe_cosine(probe)["all"] for name, tr in trainers.items()},
                         **{f"{name} params": parameter_cosine(tr, probe) for name, tr in trainers.items()},
                         "control params": parameter_cosine(trainers["true future"], probe, guess="control"),
                         **({"oracle params": parameter_cosine(trainers["true future"], probe, guess="oracle")}
                            if args.synth_state == "controller" else {}),
                         **{f"{name} fit": float(np.mean(fits[name][-args.every:])) if fits[name] else float("nan")
                            for name in trainers}})
        if step == args.steps:
            break
        boot = trainers["bootstrapped"]
        boot.train_batch(train.sample(16, samplers["bootstrapped"]))
        fits["bootstrapped"].append(boot.synth_fit[-1] if boot.synth_fit else float("nan"))
        for name in targets[1:]:
            fits[name].append(fit_on_true_future(trainers[name], train.sample(16, samplers[name]),
                                                 scaled=name == "scaled"))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items()), "the network moved"

    print(f"NMN synthesizers on a frozen network ({args.task}, length {args.length}, truncation {params.truncation}, "
          f"{args.pretrain} bp updates first, {pretrain_s:.0f} s; synth lr {args.synth_lr:g}, hidden "
          f"{args.synth_hidden}, seed {args.seed}; synthesised: {', '.join(synthesised)}; addressing "
          f"{args.addressing})")
    print("true future gradient's norm per episode at the boundaries (mean over the probe's episodes; min – max over "
          "boundaries): " + ", ".join(f"{k} {lo:.2f} – {hi:.2f}" for k, (lo, hi) in norms.items()))
    print("cosine to the true future gradient on fixed validation episodes (probe) and to each one's own training "
          f"target (fit, mean of the last steps); ceiling √agreement = {ceiling:.3f}")
    names = [k for k in rows[0] if k != "step"]
    print("(params: the same probe over the controllers' parameters — the update the synthetic gradients make vs "
          "the one the true future gradients would)")
    print(f"{'step':>6}" + "".join(f"{n:>20}" for n in names))
    for row in rows:
        print(f"{row['step']:>6}" + "".join(f"{row[n]:>20.3f}" for n in names))
    last = rows[-1]
    final = {name: tr.probe_cosine(probe) for name, tr in trainers.items()}
    print("\nper state tensor at the end (probe cosine; ceiling √agreement of two futures):")
    print(f"{'tensor':>8}" + "".join(f"{n:>15}" for n in trainers) + f"{'ceiling':>15}")
    final = {n: {**cos, "mean": float(np.mean([v for k, v in cos.items() if k != "all"]))} for n, cos in final.items()}
    ceilings["mean"] = float(np.mean([v for k, v in ceilings.items() if k != "all"]))
    for key in final["bootstrapped"]:
        print(f"{key:>8}" + "".join(f"{final[n][key]:>15.3f}" for n in trainers)
              + f"{ceilings.get(key, float('nan')):>15.3f}")
    result = {f"nmn_synth_cos_{n.replace(' ', '_')}": last[n] for n in trainers}
    result.update({f"params_cos_{n.replace(' ', '_')}": last[f"{n} params"] for n in (*trainers, "control", "oracle")
                   if f"{n} params" in last})
    if "scaled" in final:
        result["mean_over_tensors_scaled"] = final["scaled"]["mean"]
    result.update(ceiling_mean_over_tensors=ceilings["mean"], ceiling=ceiling)
    result.update({f"grad_norm_max_{k}": hi for k, (_, hi) in norms.items()})
    print("RESULT " + " ".join(f"{k}={v:.3f}" for k, v in result.items()) + " "
          + json.dumps({"task": args.task, "pretrain": args.pretrain, "steps": args.steps, "seed": args.seed,
                        "synth_lr": args.synth_lr, "synth_hidden": args.synth_hidden,
                        "synth_state": args.synth_state, "addressing": args.addressing}, separators=(",", ":")))


if __name__ == "__main__":
    main()
