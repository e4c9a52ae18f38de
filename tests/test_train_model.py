"""Fusion models without Ray: gradient flow and masking per fusion type, exact resume, losses."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline.fusion.loss import fusion_loss, info_nce
from pipeline.fusion.model import FUSIONS, FusionModel
from pipeline.train.config import TrainConfig
from pipeline.train.loop import fit_local, load_state, save_state

DIMS = {"image": 12, "text": 10, "audio": 6}


def synthetic_table(n: int, seed: int = 0, n_classes: int = 3) -> pa.Table:
    """Rows whose three modalities are noisy views of a class prototype, some missing."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    cols: dict = {
        "key": [f"k{i}" for i in range(n)],
        "meta": [json.dumps({"label": f"c{y}"}) for y in labels],
    }
    for j, (m, d) in enumerate(DIMS.items()):
        protos = np.random.default_rng(100 + j).normal(size=(n_classes, d))
        x = (protos[labels] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)
        has = rng.random(n) > 0.15
        cols[f"{m}_emb"] = pa.FixedSizeListArray.from_arrays(
            pa.array(x.reshape(-1)), d, mask=pa.array(~has)
        )
        cols[f"has_{m}"] = has
    cols["label"] = pa.array(labels, pa.int64())
    return pa.table(cols)


def batch(n: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = {m: torch.randn(n, d, generator=g) for m, d in DIMS.items()}
    mask = {m: torch.rand(n, generator=g) > 0.3 for m in DIMS}
    mask["image"][0] = True  # row 0: image only
    mask["text"][0] = mask["audio"][0] = False
    return feats, mask


@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_parameter_gets_a_gradient(fusion):
    torch.manual_seed(0)
    model = FusionModel(DIMS, fusion, d=16, embed_dim=8, n_classes=3)
    feats, mask = batch()
    for m in DIMS:
        mask[m][:] = True
    out = model(feats, mask)
    loss, parts = fusion_loss(model, out, mask, torch.randint(0, 3, (16,)), 1.0, 1.0)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{fusion}: no gradient reaches {name}"
        assert torch.isfinite(p.grad).all(), name
    assert sum(float(p.grad.abs().sum()) for p in model.parameters()) > 0
    assert set(parts) == {
        "nce_image_text",
        "nce_image_audio",
        "nce_text_audio",
        "nce_fused_image",
        "nce_fused_text",
        "nce_fused_audio",
        "ce",
    }


@pytest.mark.parametrize("fusion", FUSIONS)
def test_single_modality_logits_are_what_eval_scores_and_train_each_path(fusion):
    """``w_single`` trains the logits of each modality alone: the same logits the model gives
    when only that modality is present, and only on rows that have it."""
    torch.manual_seed(0)
    model = FusionModel(DIMS, fusion, d=16, embed_dim=8, n_classes=3).eval()
    feats, mask = batch()
    labels = torch.randint(0, 3, (16,))
    out = model(feats, mask, single=True)
    for m in DIMS:
        alone = {k: v & (k == m) for k, v in mask.items()}
        torch.testing.assert_close(out["single_logits"][m], model(feats, alone)["logits"])
    base, _ = fusion_loss(model, out, mask, labels, 1.0, 1.0)
    loss, parts = fusion_loss(model, out, mask, labels, 1.0, 1.0, w_single=0.5)
    each = [
        torch.nn.functional.cross_entropy(out["single_logits"][m][mask[m]], labels[mask[m]])
        for m in DIMS
    ]
    torch.testing.assert_close(parts["ce_single"], torch.stack(each).mean())
    torch.testing.assert_close(loss, base + 0.5 * parts["ce_single"])
    assert "single_logits" not in model(feats, mask)  # export and eval trace the plain call


@pytest.mark.parametrize(
    ("fusion", "relations"),
    [*((f, ()) for f in FUSIONS), ("late", ("image~text", "image~audio"))],
)
def test_a_missing_modality_cannot_leak_into_the_output(fusion, relations):
    torch.manual_seed(0)
    model = FusionModel(DIMS, fusion, d=16, embed_dim=8, n_classes=3, relations=relations)
    model.set_relations(
        {
            p: (
                *(x for m in p.split("~") for x in (torch.randn(DIMS[m]), torch.randn(DIMS[m], 4))),
                0.1,
                2.0,
            )
            for p in relations
        }
    )
    model = model.eval()
    feats, mask = batch()
    with torch.no_grad():
        a = model(feats, mask)
        noisy = {m: v.clone() for m, v in feats.items()}
        for m in DIMS:  # garbage (even huge values) wherever the modality is missing
            noisy[m][~mask[m]] = 1e4 * torch.randn(int((~mask[m]).sum()), DIMS[m])
        b = model(noisy, mask)
    torch.testing.assert_close(a["fused"], b["fused"])
    torch.testing.assert_close(a["logits"], b["logits"])
    assert torch.isfinite(a["fused"]).all()
    # Masks are not a blind zero-fill: a present modality of zeros differs from a missing one.
    z = {m: v.clone() for m, v in feats.items()}
    z["text"][1] = 0.0
    m2 = {m: v.clone() for m, v in mask.items()}
    m2["text"][1], m2["image"][1] = True, True
    m3 = {m: v.clone() for m, v in m2.items()}
    m3["text"][1] = False
    with torch.no_grad():
        assert not torch.allclose(model(z, m2)["fused"][1], model(z, m3)["fused"][1])


def test_info_nce_is_low_for_aligned_pairs_and_ignores_absent_rows():
    e = torch.nn.functional.normalize(torch.randn(8, 4), dim=-1)
    scale = torch.tensor(np.log(100.0))
    both = torch.ones(8, dtype=torch.bool)
    aligned = info_nce(e, e, scale, both)
    shuffled = info_nce(e, e[torch.randperm(8)], scale, both)
    assert aligned < shuffled
    none = info_nce(e, e, scale, torch.zeros(8, dtype=torch.bool))
    assert float(none) == 0.0


def _cfg(**kw) -> TrainConfig:
    base = dict(
        data="x",
        output="y",
        fusion="mid",
        d_model=16,
        embed_dim=8,
        batch_size=16,
        epochs=3,
        lr=3e-3,
        warmup_steps=2,
        early_stop_patience=None,
        seed=3,
    )
    base.update(kw)
    return TrainConfig(**base)


def _params(tr) -> list[torch.Tensor]:
    return [p.detach().clone() for p in tr.core.parameters()]


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_resume_is_bit_for_bit(grad_accum):
    train, val = synthetic_table(160, seed=1), synthetic_table(48, seed=2)
    cfg = _cfg(grad_accum=grad_accum, dropout=0.2, modality_dropout=0.3)
    n = 12  # optimizer steps; one epoch holds 10 batches, so the checkpoint is mid-epoch 0/1
    full = fit_local(cfg.model_copy(update={"max_steps": n}), train, val, DIMS, 3)
    half = fit_local(
        cfg.model_copy(update={"max_steps": n}), train, val, DIMS, 3, stop_after_steps=n // 2
    )
    assert half.progress.step == n // 2
    state = load_state(save_state(half.state_dict()))  # through bytes, as on storage
    torch.manual_seed(999)  # a fresh process would not share the RNG: resume must restore it
    resumed = fit_local(cfg.model_copy(update={"max_steps": n}), train, val, DIMS, 3, state=state)
    assert resumed.progress.step == full.progress.step == n
    for a, b in zip(_params(full), _params(resumed)):
        assert torch.equal(a, b)
    assert full.opt.state_dict()["state"][0]["exp_avg"].equal(
        resumed.opt.state_dict()["state"][0]["exp_avg"]
    )
    # The saved weights are the moving average, and it resumes bit for bit too.
    for k, v in full.final_weights().items():
        assert torch.equal(v, resumed.final_weights()[k])


def test_the_saved_weights_are_the_warmed_up_moving_average_of_the_steps():
    from pipeline.train.loop import Trainer

    train, val = synthetic_table(96, seed=1), synthetic_table(32, seed=2)
    cfg = _cfg(ema_decay=0.5, max_steps=4)
    seen: list[dict[str, torch.Tensor]] = []
    orig = Trainer.train_epoch

    def capture(self, batches, on_step=None, **kw):
        def step(m):
            seen.append({k: v.detach().clone() for k, v in self.core.state_dict().items()})

        return orig(self, batches, on_step=step, **kw)

    Trainer.train_epoch = capture  # type: ignore[method-assign]
    try:
        tr = fit_local(cfg, train, val, DIMS, 3)
    finally:
        Trainer.train_epoch = orig  # type: ignore[method-assign]
    assert len(seen) == 4
    name = next(k for k, v in seen[0].items() if v.is_floating_point())
    expected = seen[0][name]
    for n, s in enumerate(seen[1:], start=1):  # TensorFlow's warm-up: min(d, (1+n)/(10+n))
        d = min(0.5, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * s[name]
    got = tr.final_weights()[name]
    torch.testing.assert_close(got, expected)
    assert not torch.equal(got, tr.core.state_dict()[name])
    last = fit_local(cfg.model_copy(update={"ema_decay": None}), train, val, DIMS, 3)
    assert all(torch.equal(v, last.core.state_dict()[k]) for k, v in last.final_weights().items())


def _val_accuracy(weights: dict, cfg: TrainConfig, val: pa.Table) -> float:
    """Accuracy of saved weights loaded into a fresh model, as eval loads a run."""
    from pipeline.fusion.artifact import build_model
    from pipeline.train.data import to_tensors

    model = build_model(cfg.model_spec(DIMS, 3), dropout=cfg.dropout)
    model.load_state_dict(weights)
    model.eval()
    feats, masks, labels = to_tensors(val, DIMS, "cpu")
    with torch.no_grad():
        pred = model(feats, masks)["logits"].argmax(1)
    return float((pred == labels).float().mean())


def test_a_short_run_reports_the_accuracy_of_the_weights_it_saves():
    """A handful of steps: the averaged weights are far from the live ones, and what training
    reports must be what the saved model scores on the same rows."""
    train, val = synthetic_table(160, seed=1), synthetic_table(64, seed=2)
    cfg = _cfg(max_steps=5, epochs=3, lr=1e-2)
    tr = fit_local(cfg, train, val, DIMS, 3)
    assert tr.progress.stopped == "max_steps" and tr.progress.best_epoch == 1
    reported = tr.progress.best_metrics["val_acc"]
    assert reported == pytest.approx(_val_accuracy(tr.final_weights(), cfg, val), abs=1e-9)


def test_early_stopping_keeps_the_best_epochs_weights_and_says_why(monkeypatch):
    from pipeline.train.loop import Trainer

    train, val = synthetic_table(96, seed=1), synthetic_table(32, seed=2)
    losses = iter([1.0, 0.5, 0.7, 0.8, 0.9, 0.95])
    at_epoch: dict[int, dict] = {}
    orig_evaluate, orig_end = Trainer.evaluate, Trainer.end_epoch

    def scripted(self, batches):  # the real evaluation, with a loss that rises after epoch 2
        tot = orig_evaluate(self, batches)
        return {**tot, "loss": next(losses) * tot["rows"]}

    def end_epoch(self, metrics):
        at_epoch[self.progress.epoch] = {k: v.clone() for k, v in self.last_weights().items()}
        return orig_end(self, metrics)

    monkeypatch.setattr(Trainer, "evaluate", scripted)
    monkeypatch.setattr(Trainer, "end_epoch", end_epoch)
    cfg = _cfg(epochs=10, early_stop_patience=2, early_stop_metric="val_loss")
    tr = fit_local(cfg, train, val, DIMS, 3)
    pr = tr.progress
    assert (pr.epoch, pr.best_epoch, pr.stopped) == (4, 2, "early_stop")
    assert pr.best_metrics["val_loss"] == pytest.approx(0.5)
    saved = tr.final_weights()
    assert all(torch.equal(v, at_epoch[2][k]) for k, v in saved.items())
    assert not all(torch.equal(v, at_epoch[4][k]) for k, v in saved.items())
    # The best state survives a checkpoint: a resumed run saves the same weights.
    from pipeline.train.loop import final_weights

    state = load_state(save_state(tr.state_dict()))
    assert all(torch.equal(v, saved[k]) for k, v in final_weights(state).items())


def test_at_equal_accuracy_the_lower_loss_is_the_better_epoch(monkeypatch):
    """Accuracy saturates at 1.0 on a clean corpus from the first epoch: the epoch kept is the
    one of lowest loss among those, not the first."""
    from pipeline.train.loop import Trainer

    train, val = synthetic_table(96, seed=1), synthetic_table(32, seed=2)
    losses = iter([1.0, 0.6, 0.4, 0.5, 0.7, 0.8])
    orig = Trainer.evaluate

    def perfect(self, batches):
        tot = orig(self, batches)
        return {**tot, "loss": next(losses) * tot["rows"], "correct": tot["labelled"]}

    monkeypatch.setattr(Trainer, "evaluate", perfect)
    tr = fit_local(_cfg(epochs=10, early_stop_patience=2), train, val, DIMS, 3)
    assert (tr.progress.best_epoch, tr.progress.epoch, tr.progress.selected_by) == (3, 5, "val_acc")


def test_early_stopping_watches_accuracy_by_default_when_classifying():
    train, val = synthetic_table(160, seed=1), synthetic_table(64, seed=2)
    tr = fit_local(_cfg(epochs=4), train, val, DIMS, 3)
    assert tr.progress.selected_by == "val_acc"
    assert tr.progress.best == -tr.progress.best_metrics["val_acc"]
    no_labels = fit_local(_cfg(epochs=2, w_classify=0.0, w_single=0.0), train, val, DIMS, 0)
    assert no_labels.progress.selected_by == "val_loss"


def test_training_learns_the_synthetic_classes():
    train, val = synthetic_table(480, seed=1), synthetic_table(120, seed=2)
    tr = fit_local(_cfg(epochs=8), train, val, DIMS, 3)
    tot = tr.evaluate(val.slice(i, 40) for i in range(0, 120, 40))
    assert tot["correct"] / tot["labelled"] > 0.9


def test_a_pickle_checkpoint_is_refused():
    import io

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    buf = io.BytesIO()
    torch.save({"x": Evil()}, buf)
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="checkpoint refused"):
        load_state(buf.getvalue())


@pytest.mark.parametrize("preset", ["cnn_lstm", "attn_conv"])
def test_classic_presets_train_and_take_missing_text(preset):
    from pipeline.fusion.presets import ClassicFusion

    torch.manual_seed(0)
    model = ClassicFusion(preset, 3, d=16, embed_dim=8)
    ids = torch.randint(1000, 2000, (6, 10))
    ids[:, 7:] = 0  # padding
    ids[5] = 0  # row 5 has no caption at all
    feats = {"image": torch.randn(6, 3, 32, 32), "text": ids}
    mask = {"image": torch.ones(6, dtype=torch.bool), "text": torch.tensor([True] * 5 + [False])}
    out = model(feats, mask)
    assert torch.isfinite(out["fused"]).all() and out["logits"].shape == (6, 3)
    loss, _ = fusion_loss(model, out, mask, torch.tensor([0, 1, 2, 0, 1, 2]), 1.0, 1.0)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


def test_finetune_trains_the_upper_encoder_layers_and_keeps_the_lower_frozen():
    from pipeline.fusion.presets import FinetuneFusion

    torch.manual_seed(0)
    model = FinetuneFusion("early", 3, d=16, embed_dim=8, dropout=0.0, freeze_fraction=0.8)
    img = list(model.image_enc.parameters())
    before = [p.detach().clone() for p in img]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    feats = {
        "image": torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8),
        "text": torch.randint(1000, 2000, (4, 8)),
    }
    mask = {"image": torch.ones(4, dtype=torch.bool), "text": torch.ones(4, dtype=torch.bool)}
    loss, _ = fusion_loss(model, model(feats, mask), mask, torch.tensor([0, 1, 2, 0]), 1.0, 1.0)
    loss.backward()
    opt.step()
    cut = int(len(img) * 0.8)
    assert all(torch.equal(a, p) for a, p in zip(before[:cut], img[:cut]))  # frozen lower layers
    assert any(not torch.equal(a, p) for a, p in zip(before[cut:], img[cut:]))  # tuned upper ones


def test_training_progress_line_reads_what_rank_zero_writes(tmp_path):
    """Long training is never silent: the driver prints step/total, loss, rate and an ETA."""
    import io as _io

    from pipeline.progress import Progress
    from pipeline.train.metrics import PROGRESS_FILE, MetricsLog, TrainProgressLine

    log = MetricsLog(str(tmp_path), enabled=True)
    log.step({"step": 5, "epoch": 0, "loss": 1.25, "time": 0.0})
    assert json.loads((tmp_path / PROGRESS_FILE).read_text())["step"] == 5
    out = _io.StringIO()
    progress = Progress("train", unit="steps", stream=out, first_s=0)
    line = TrainProgressLine(str(tmp_path), total_steps=100, progress=progress)
    line.show({"step": 5, "epoch": 0, "loss": 1.25})
    first = progress.line()
    assert progress.first is not None
    progress.first = (progress.first[0] - 2.0, 5)  # two seconds later, 20 more steps
    line.show({"step": 25, "epoch": 1, "loss": 0.5})
    later = progress.line()
    assert "steps 5/100" in first and "loss 1.2500" in first and "steps/s" not in first
    assert "steps 25/100" in later and "10.0 steps/s" in later and "ETA 8s" in later
    assert "[train] training" in out.getvalue()


def test_torchscript_is_written_and_read_without_deprecation_noise():
    import io as _io
    import warnings

    from pipeline.models.weights import torchscript_quietly

    m = torch.nn.Linear(2, 2)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with torchscript_quietly():
            t = torch.jit.trace(m, torch.zeros(1, 2))
            buf = _io.BytesIO()
            torch.jit.save(t, buf)
            buf.seek(0)
            torch.jit.load(buf)
    assert not [w for w in seen if "deprecated" in str(w.message)], [str(w.message) for w in seen]
