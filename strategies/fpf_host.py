"""FPF's ``loss: host``: fine-tune with the replay loss of the strategy FPF is added to, read from that strategy.

Part of FPF / k-FPF (`strategies.fpf`). Zhao et al. (ICML 2023) fine-tune with cross-entropy on the buffer (our
default, ``loss: ce``); k-FPF-KD adds DER's logit matching. Issue #28 asks whether FPF's loss on Dark-ER (−3.5 points
at buffer 200 on Split Fashion-MNIST) comes from fine-tuning a logit-matching host with plain cross-entropy, so
``loss: host`` uses the host's own objective on its buffer:

- Dark-ER (Avalanche's `DER`; Buzzega et al., NeurIPS 2020, §3 DER and §3.1 DER++): α · MSE(logits, the logits
  stored with each buffer sample) + β · CE(logits, buffer labels), with the α and β of the strategy in the run
  (`strategy.alpha`, `strategy.beta`; β = 0 is plain DER). One `BufferLoss`, k-FPF-KD's.
- Replay (Avalanche's `Replay`): its replay loss is cross-entropy on buffer samples, so ``host`` equals ``ce``.

Deviations from the hosts' own training, by construction: the fine-tuning sees the buffer only, so the host's
cross-entropy on the incoming batch has no counterpart (the current task's samples are in the buffer); one buffer
batch feeds both DER++ terms (the paper draws two; Avalanche's `DER` also uses one); FPF's lr and steps are not
rescaled for α and β, so with Dark-ER's defaults (α 0.1, β 0.5) the host loss's gradients are about half as large
as cross-entropy's. The logits are those Avalanche's `DER` stores: computed at the end of the experience that added
the sample, in eval mode (the paper stores them when the sample is inserted).

`HOSTS` is what a config may pair with ``loss: host`` (this module imports torch only when a run calls `host_loss`).
"""
from __future__ import annotations

HOSTS = {"replay": "cross-entropy on the buffer (it stores no logits)",
         "dark_er": "α·MSE to the logits stored with each sample + β·CE, the strategy's own alpha and beta"}


def host_loss(strategy):
    """The replay loss of `strategy` on buffer samples, as a `BufferLoss` (its weights read from the strategy)."""
    from avalanche.training import DER, Replay

    from strategies.fpf_tuning import BufferLoss

    if isinstance(strategy, DER):
        return BufferLoss(ce=float(strategy.beta), logits=float(strategy.alpha))
    if isinstance(strategy, Replay):
        return BufferLoss()
    raise ValueError(f"FPF loss: 'host' does not know the replay loss of {type(strategy).__name__} (it knows "
                     f"{', '.join(HOSTS)}); use loss: 'ce'")
