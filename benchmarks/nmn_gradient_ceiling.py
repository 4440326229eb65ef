"""How well could any synthesizer predict the NMN's future gradient? (the probe behind the sg gate's failure)

Trains the episodic NMN (strategies/nmn_episodic.py; digits episodes as experiments/nmn_episodic.yaml, method
bp, seed 0) and, before training and after every `--every` updates, takes validation episodes and compares the
true future gradient at a chunk boundary under two futures of the same episode (as sampled, and with the remaining
labels reordered and fresh images of their classes: the same task and the same state at the boundary). Their
cosine estimates |E[g | state]|² / E|g|²; its square root bounds the cosine any synthesizer (which sees only
the state) can reach on average. Prints the table per boundary and state tensor and a RESULT line; compare with
the sg runs' `synth_cos`.

    python benchmarks/nmn_gradient_ceiling.py            # 150 updates, boundaries 5, 25, 45 (a few minutes)
    python benchmarks/nmn_gradient_ceiling.py --addressing unit     # the read without cosine's 1/‖key‖ factor
"""
from __future__ import annotations

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=150)
    parser.add_argument("--every", type=int, default=75)
    parser.add_argument("--method", default="bp", choices=("bp", "bptt", "sg"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--addressing", default="cosine", choices=("cosine", "unit"),
                        help="the memory read (the runs' addressing): cosine, or unit keys and a plain dot product")
    args = parser.parse_args()

    import numpy as np
    import torch

    from strategies.nmn_episodic import EVAL_SEEDS, EpisodicNMN, Trainer, build_task, future_gradient_agreement
    from strategies.catalog import NMNEpisodicParams

    torch.set_num_threads(1)
    params = NMNEpisodicParams(method=args.method, updates=args.updates, addressing=args.addressing)
    train, val, _, kind, n_out, label_dim = build_task(params)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = EpisodicNMN.for_params(params, train.input_dim, n_out, label_dim)
    trainer = Trainer(model, method=args.method, kind=kind, lr=1e-3, fast_lr_ratio=1.0, truncation=params.truncation)
    episodes = val.sample(args.episodes, np.random.default_rng(EVAL_SEEDS["probe"]))
    boundaries = (5, 25, 45)
    rows = []
    for update in range(args.updates + 1):
        if update % args.every == 0:
            for b in boundaries:
                rows.append({"update": update, "boundary": b, **future_gradient_agreement(trainer, episodes, b, val)})
        if update < args.updates:
            trainer.train_batch(train.sample(16, rng))
    names = [k for k in rows[0] if k not in ("update", "boundary")]
    print(f"cosine between the true future gradients of two futures of the same episodes ({args.method}, "
          f"seed {args.seed}, {args.episodes} validation episodes, addressing {args.addressing}); "
          "ceiling = √ of 'all'")
    print(f"{'update':>7}{'step':>6}" + "".join(f"{n:>9}" for n in names) + f"{'ceiling':>9}")
    for row in rows:
        print(f"{row['update']:>7}{row['boundary']:>6}" + "".join(f"{row[n]:>9.3f}" for n in names)
              + f"{max(row['all'], 0) ** 0.5:>9.3f}")
    last = [r for r in rows if r["update"] == rows[-1]["update"]]
    agreement = float(np.mean([r["all"] for r in last]))
    print(f"RESULT nmn_future_gradient_agreement={agreement:.3f} synth_cos_ceiling={max(agreement, 0) ** 0.5:.3f} "
          + json.dumps({"addressing": args.addressing,
                        **{f"b{r['boundary']}_{n}": round(r[n], 3) for r in last for n in names}},
                       separators=(",", ":")))


if __name__ == "__main__":
    main()
