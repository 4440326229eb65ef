"""CMT training survives a stop (issue #30): a `clsuite run` SIGKILLed right after its training checkpoint at
step 4 is relaunched with --resume, continues in the same MLflow run, and ends with the loss history, final
loss and reading probes of an uninterrupted run with the same seed — fresh documents and per-part learning
rates on, so the data position and both optimiser groups must come back."""
from __future__ import annotations

import pytest

from tests.test_resume import env, history, killed_and_resumed, uninterrupted  # noqa: F401

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")


def cmt_config(experiment: str) -> dict:
    from cl.registry import TRANSFERS

    smoke = dict(TRANSFERS.get("cmt").smoke_options)
    return {"experiment": experiment, "seed": 2,
            "transfer": {"name": "cmt", **smoke, "train_steps": 7, "warmup_steps": 1, "train_checkpoint_every": 2,
                         "train_data": "fresh", "encoder_lr": 3e-4, "probe_documents": 3, "probe_every": 3}}


def test_cmt_training_killed_at_step_4_resumes_into_the_same_run_with_the_same_loss(env, tmp_path, fresh_store):
    raw = cmt_config("resume-cmt")
    client, run_id = killed_and_resumed(raw, tmp_path, env, fresh_store, "step=4")

    reference, recorder = uninterrupted(raw)
    assert history(client, run_id, "train/total") == sorted(recorder.metrics["train/total"])
    assert [s for s, _ in history(client, run_id, "probe/right_bank_f1")] == [0, 3, 6, 7]
    assert history(client, run_id, "probe/true_memory_loss") == sorted(recorder.metrics["probe/true_memory_loss"])
    metrics = client.get_run(run_id).data.metrics
    for key in ("final/train_loss", "final/f1", "final/probe_right_bank_loss"):
        assert metrics[key] == reference.metrics[key], key
