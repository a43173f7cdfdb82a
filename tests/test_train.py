"""Training: config, optimiser groups and schedule, the loop (logging, checkpoints, exact resume,
max-steps, NaN), and `sgmn train` end to end on a tiny synthetic data set with the real model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import Dataset

from sgmn.train.config import TrainConfig, parse_assignments
from sgmn.train.loop import NonFiniteLossError, Trainer, resolve_checkpoint, split_validation
from sgmn.train.optim import build_optimizer, build_scheduler, lr_factor, param_groups

torch.set_num_threads(1)


# ---- a small model and data set with the training contract ---------------------------------


class ToyModel(nn.Module):
    """forward(batch) -> {"loss", "losses"}; a `backbone.` part, norms, an embedding and dropout."""

    def __init__(self, config=None):
        super().__init__()
        self.config = config or {"dim": 8}
        self.backbone = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
        self.position_embedding = nn.Embedding(4, 8)
        self.head = nn.Linear(8, 3)
        self.dropout = nn.Dropout(0.3)
        self.nan_at_call = None  # make the loss NaN at this forward call (1-based)
        self.calls = 0

    def forward(self, batch):
        self.calls += 1
        x = self.backbone(batch["x"]) + self.position_embedding.weight[0]
        logits = self.head(self.dropout(x))
        ce = nn.functional.cross_entropy(logits, batch["labels"])
        reg = logits.pow(2).mean()
        if self.nan_at_call == self.calls:
            reg = reg * float("nan")
        return {"loss": ce + 0.1 * reg, "losses": {"ce": ce, "reg": reg}}

    def save_pretrained(self, folder):
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(self.config))


class ToyPairs(Dataset):
    """Epoch-seeded noise on fixed inputs, like TrainPairs' epoch-seeded augmentation."""

    def __init__(self, n=24):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        rng = np.random.default_rng([self.epoch, i])
        noise = torch.from_numpy(rng.normal(size=8).astype(np.float32)) * 0.1
        return {"x": self.x[i] + noise, "labels": self.y[i]}


def toy_trainer(out, validate=None, model=None, **overrides):
    settings = {"batch_size": 4, "epochs": 3, "num_workers": 0, "log_every": 1, "lr": 1e-2, **overrides}
    cfg = TrainConfig(**settings)
    torch.manual_seed(0)
    return Trainer(model or ToyModel(), ToyPairs(), cfg, out, validate=validate)


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


# ---- config ---------------------------------------------------------------------------------


def test_config_json_and_overrides(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"epochs": 3, "lr": 1e-4, "betas": [0.8, 0.9], "precision": "bf16"}))
    cfg = TrainConfig.from_json(path)
    assert (cfg.epochs, cfg.lr, cfg.betas, cfg.precision) == (3, 1e-4, (0.8, 0.9), "bf16")
    cfg2 = cfg.with_overrides({"grad_accum": "2", "max_steps": "null", "lr": "3e-4"})
    assert (cfg2.grad_accum, cfg2.max_steps, cfg2.lr, cfg2.epochs) == (2, None, 3e-4, 3)
    # round trip through the run folder's train_config.json
    cfg2.save_json(tmp_path / "saved.json")
    assert TrainConfig.from_json(tmp_path / "saved.json") == cfg2

    assert parse_assignments(["train.grad_accum=2", "model.vision.layers=2", "model.name=x"]) == {
        "train.grad_accum": 2,
        "model.vision.layers": 2,
        "model.name": "x",
    }


@pytest.mark.parametrize(
    "content, message",
    [
        ({"epochs": 3, "lr_max": 1}, "lr_max"),
        ({"epochs": "three"}, "'epochs' must be an integer"),
        ({"precision": "fp8"}, "precision"),
        ({"grad_accum": 0}, "grad_accum"),
    ],
)
def test_config_rejects_bad_fields_naming_them(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_json(path)


def test_config_reports_json_syntax_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "epochs": 3,\n  "lr": ,\n}\n')
    with pytest.raises(ValueError, match=r"broken.json: line 3"):
        TrainConfig.from_json(path)


# ---- optimiser and schedule ---------------------------------------------------------------


def test_param_groups_decay_and_backbone_lr():
    model = ToyModel()
    cfg = TrainConfig(lr=3e-4, backbone_lr_factor=1e-3, weight_decay=0.2)
    groups = {g["name"]: g for g in param_groups(model, cfg)}
    names = {n: p for n, p in model.named_parameters()}

    def group_of(param_name):
        return next(k for k, g in groups.items() if any(p is names[param_name] for p in g["params"]))

    assert group_of("backbone.0.weight") == "backbone/decay"
    assert group_of("backbone.0.bias") == "backbone/no_decay"
    assert group_of("backbone.1.weight") == "backbone/no_decay"  # LayerNorm gain
    assert group_of("head.weight") == "new/decay"
    assert group_of("head.bias") == "new/no_decay"
    assert group_of("position_embedding.weight") == "new/no_decay"
    assert groups["backbone/decay"]["lr"] == pytest.approx(3e-7)
    assert groups["new/decay"]["lr"] == pytest.approx(3e-4)
    assert groups["new/decay"]["weight_decay"] == 0.2
    assert groups["backbone/no_decay"]["weight_decay"] == 0.0 and groups["new/no_decay"]["weight_decay"] == 0.0
    # every trainable parameter in exactly one group
    counted = [p for g in groups.values() for p in g["params"]]
    assert len(counted) == len(names) == len({id(p) for p in counted})


def test_schedule_matches_the_formula():
    model = ToyModel()
    cfg = TrainConfig(lr=1e-3, backbone_lr_factor=0.1, warmup_ratio=0.1)
    opt = build_optimizer(model, cfg)
    total = 50
    sched = build_scheduler(opt, total, cfg.warmup_ratio)
    warmup = 5
    seen = {}
    for step in range(total + 1):
        seen[step] = {g["name"]: g["lr"] for g in opt.param_groups}
        opt.step()
        sched.step()
    assert seen[0]["new/decay"] == 0.0  # linear warm-up starts at 0
    assert seen[2]["new/decay"] == pytest.approx(1e-3 * 2 / warmup)
    assert seen[warmup]["new/decay"] == pytest.approx(1e-3)  # end of warm-up: the base lr
    assert seen[warmup]["backbone/decay"] == pytest.approx(1e-4)
    mid = warmup + (total - warmup) // 2
    expected = 1e-3 * 0.5 * (1 + math.cos(math.pi * (mid - warmup) / (total - warmup)))
    assert seen[mid]["new/decay"] == pytest.approx(expected)
    assert seen[total]["new/decay"] == pytest.approx(0.0, abs=1e-12)  # cosine reaches 0 at the end
    assert lr_factor(total - 1, total, warmup) > 0


# ---- the loop with the toy model --------------------------------------------------------------


def test_trainer_logs_and_checkpoints(tmp_path):
    r1s = iter([10.0, 30.0, 20.0])
    result = toy_trainer(tmp_path / "run", validate=lambda m, e: {"R@1": next(r1s)}).fit()
    run = tmp_path / "run"
    assert result.epochs_completed == 3 and result.step == 18 and not result.stopped_early
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "step"]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert [r["step"] for r in steps] == list(range(1, 19))
    assert set(steps[0]["losses"]) == {"ce", "reg"} and steps[0]["clips_per_s"] > 0
    assert "pair_chance" not in steps[0]  # no L_pair, no chance level for it
    assert steps[0]["lr"] == 0.0 and steps[-1]["lr"] < steps[5]["lr"]  # warm-up from 0, cosine down
    assert [r["val"]["R@1"] for r in epochs] == [10.0, 30.0, 20.0]
    for n in (1, 2, 3):
        assert (run / f"epoch-{n:03d}" / "train_state.pt").is_file()
    assert json.loads((run / "train_config.json").read_text())["batch_size"] == 4
    # last/ = epoch 3, best/ = epoch 2 (highest R@1)
    for name, epoch in (("last", 3), ("best", 2)):
        for key, value in weights(run / name).items():
            assert torch.equal(value, weights(run / f"epoch-{epoch:03d}")[key])
    assert result.best_metric == 30.0
    # the loss went down on this easy problem
    assert epochs[-1]["losses"]["ce"] < epochs[0]["losses"]["ce"]


def test_resume_after_epoch_gives_identical_weights(tmp_path):
    full = toy_trainer(tmp_path / "full").fit()
    assert full.epochs_completed == 3

    part = toy_trainer(tmp_path / "part", max_steps=12).fit()  # 6 steps per epoch: stops after epoch 2
    assert part.epochs_completed == 2 and part.stopped_early
    assert resolve_checkpoint(tmp_path / "part").name == "last"

    resumed = toy_trainer(tmp_path / "part")
    resumed.resume(tmp_path / "part" / "epoch-002")
    result = resumed.fit()
    assert result.epochs_completed == 3 and result.step == 18
    a, b = weights(tmp_path / "full" / "last"), weights(tmp_path / "part" / "last")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_resume_mid_epoch_with_accumulation(tmp_path):
    full = toy_trainer(tmp_path / "full", grad_accum=2).fit()
    assert full.step == 9
    part = toy_trainer(tmp_path / "part", grad_accum=2, max_steps=4).fit()  # 3 steps/epoch: stops inside epoch 2
    assert part.stopped_early and part.epochs_completed == 1 and part.step == 4
    resumed = toy_trainer(tmp_path / "part", grad_accum=2)
    resumed.resume(tmp_path / "part")  # the run folder -> its last/
    assert resumed.micro_in_epoch == 2
    resumed.fit()
    a, b = weights(tmp_path / "full" / "last"), weights(tmp_path / "part" / "last")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_fresh_run_refuses_a_folder_holding_a_run(tmp_path):
    toy_trainer(tmp_path / "run", epochs=1).fit()
    log = (tmp_path / "run" / "log.jsonl").read_text()
    with pytest.raises(FileExistsError, match=r"already holds a training run .*--resume"):
        toy_trainer(tmp_path / "run", epochs=1).fit()
    assert (tmp_path / "run" / "log.jsonl").read_text() == log  # nothing appended


def test_nan_loss_stops_with_step_and_terms(tmp_path):
    model = ToyModel()
    model.nan_at_call = 5
    with pytest.raises(NonFiniteLossError, match=r"optimiser step 5 .*non-finite terms: \['reg'\]"):
        toy_trainer(tmp_path / "run", model=model).fit()


def test_optimizer_is_adamw_with_the_recipe_defaults():
    with pytest.raises(ValueError, match="recipe"):  # lr is chosen by the recipe first
        build_optimizer(ToyModel(), TrainConfig())
    config, _ = TrainConfig().resolve_recipe(pretrained_backbone=True)
    opt = build_optimizer(ToyModel(), config)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6
    decays = {g["name"]: g["weight_decay"] for g in opt.param_groups}
    assert decays == {"backbone/decay": 0.2, "backbone/no_decay": 0.0, "new/decay": 0.2, "new/no_decay": 0.0}
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["new/decay"] == pytest.approx(3e-4) and lrs["backbone/decay"] == pytest.approx(3e-7)


def record_step_grads(trainer) -> list[dict]:
    """The gradients each optimiser step applies (after clipping), one dict per step."""
    seen: list[dict] = []
    names = {id(p): n for n, p in trainer.model.named_parameters()}

    def hook(optimizer, args, kwargs):
        seen.append({names[id(p)]: p.grad.detach().clone() for g in optimizer.param_groups for p in g["params"] if p.grad is not None})

    trainer.optimizer.register_step_pre_hook(hook)
    return seen


def test_grad_accumulation_applies_the_gradient_of_the_larger_batch(tmp_path):
    # 2 micro-batches of 4 must step with the gradient of one batch of 8 (mean losses: the
    # micro-batch losses are divided by grad_accum and summed), the data order being the same.
    grads = {}
    for name, batch_size, accum in (("big", 8, 1), ("accum", 4, 2)):
        torch.manual_seed(0)
        model = ToyModel()
        model.dropout.p = 0.0  # the same function whatever the batch split
        trainer = toy_trainer(tmp_path / name, model=model, batch_size=batch_size, grad_accum=accum, grad_clip=None, epochs=1)
        grads[name] = record_step_grads(trainer)
        assert trainer.fit().step == 3
    assert len(grads["big"]) == len(grads["accum"]) == 3
    for big, accum in zip(grads["big"], grads["accum"]):
        assert big.keys() == accum.keys()
        for key in big:
            torch.testing.assert_close(accum[key], big[key], rtol=1e-5, atol=1e-6, msg=key)


def test_grad_clip_bounds_the_applied_gradient_norm(tmp_path):
    clip = 0.05
    trainer = toy_trainer(tmp_path / "run", grad_clip=clip, grad_clip_mode="global", epochs=1)
    applied = record_step_grads(trainer)
    trainer.fit()
    norms = [torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in step.values()])).item() for step in applied]
    assert len(norms) == 6 and max(norms) <= clip * (1 + 1e-4)
    # not vacuous: the logged (pre-clip) norms were above the threshold
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    logged = [r["grad_norm"] for r in rows if r["kind"] == "step"]
    assert len(logged) == 6 and min(logged) > clip


def test_module_clipping_bounds_each_module_and_logs_its_norm(tmp_path):
    clip = 0.05
    trainer = toy_trainer(tmp_path / "run", grad_clip=clip, epochs=1)  # "module" is the default
    assert set(trainer.clip_groups) == {"backbone", "position_embedding", "head"}
    applied = record_step_grads(trainer)
    trainer.fit()
    for step in applied:
        for module in ("backbone", "position_embedding", "head"):
            grads = [g for name, g in step.items() if name.startswith(module)]
            assert torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item() <= clip * (1 + 1e-4)
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "step"]
    assert set(steps[0]["grad_norms"]) == {"backbone", "position_embedding", "head"}
    total = math.sqrt(sum(v * v for v in steps[0]["grad_norms"].values()))
    assert abs(total - steps[0]["grad_norm"]) < 1e-4 * total


class _TextAndTGA(nn.Module):
    """A text head under a x100-scale loss and a small new module, as in SGMN (issue 9)."""

    def __init__(self):
        super().__init__()
        self.fc_asr = nn.Linear(8, 8)
        self.tga = nn.Linear(8, 8)

    def loss(self, x):
        return 1000.0 * self.fc_asr(x).pow(2).mean() + 1e-3 * (self.tga(x) - 1.0).pow(2).mean()


def test_module_clipping_lets_a_small_gradient_module_move():
    from sgmn.train.optim import clip_gradients, clip_groups

    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    moved = {}
    for mode in ("module", "global"):
        torch.manual_seed(0)
        model = _TextAndTGA()
        start = model.tga.weight.detach().clone()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0)
        groups = clip_groups(model, mode)
        assert set(groups) == ({"fc_asr", "tga"} if mode == "module" else {"all"})
        for step in range(20):
            opt.zero_grad()
            model.loss(x).backward()
            raw = model.tga.weight.grad.clone()
            total, norms = clip_gradients(groups, 1.0)
            if mode == "module" and step == 0:
                # the big head is clipped to 1, the small module keeps its own gradient
                assert norms["fc_asr"] > 10 and norms["tga"] < 1
                assert abs(model.fc_asr.weight.grad.norm() ** 2 + model.fc_asr.bias.grad.norm() ** 2 - 1.0) < 1e-3
                assert torch.equal(model.tga.weight.grad, raw)
            opt.step()
        moved[mode] = ((model.tga.weight - start).norm() / start.norm()).item()
    # one shared norm scales the small module's gradient below Adam's eps: it barely moves
    assert moved["module"] > 5 * moved["global"], moved


def test_detector_boxes_mask_training_and_query_patches(tiny_lpr, tmp_path, monkeypatch):
    import sgmn
    import sgmn.data.dataset as dataset_module
    from sgmn.data.dataset import NoTextVectors
    from sgmn.data.readers import read_dataset
    from sgmn.eval.protocol import encode_queries
    from sgmn.train.loop import train

    seen = []

    class SpyPairs(dataset_module.TrainPairs):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(self.use_boxes)

    monkeypatch.setattr(dataset_module, "TrainPairs", SpyPairs)
    overrides = {"vision.layers": 1, "num_frames": 4, "use_text": False}
    cfg = dict(epochs=1, max_steps=1, batch_size=4, num_workers=0, val_fraction=0.0, log_every=1)
    for detector in (False, True):
        train(tiny_lpr, "lpr4m", "sgmn-tiny", tmp_path / f"run{detector}", TrainConfig(**cfg),
              model_overrides={**overrides, "detector_boxes": detector})
    assert seen == [False, True]  # training masks patches only in the detector-assisted mode

    # queries: the same weights, with and without the mode; only the detector model masks
    data = read_dataset(tiny_lpr, "lpr4m")
    clips = data.split_clips("test")[:4]
    plain = sgmn.create_model("sgmn-tiny", **overrides)
    detector = sgmn.create_model("sgmn-tiny", **overrides, detector_boxes=True)
    detector.load_state_dict(plain.state_dict())
    masks = []
    for model in (plain, detector):
        original = model.encode_clips

        def spy(*args, _original=original, **kwargs):
            masks.append(kwargs.get("patch_mask"))
            return _original(*args, **kwargs)

        model.encode_clips = spy
    kw = dict(text=NoTextVectors(plain.config.text.dim), batch_size=4, device="cpu", progress=False)
    _, plain_emb, _ = encode_queries(plain, clips, data, **kw)
    _, detector_emb, _ = encode_queries(detector, clips, data, **kw)
    assert masks[0] is None and masks[1] is not None and not bool(masks[1].all())
    assert not torch.allclose(plain_emb.embedding, detector_emb.embedding)


def test_bf16_autocast_on_cpu_trains(tmp_path):
    model = ToyModel()
    dtypes = set()
    model.head.register_forward_hook(lambda module, args, output: dtypes.add(output.dtype))
    result = toy_trainer(tmp_path / "run", model=model, precision="bf16", epochs=1).fit()
    assert result.step == 6 and math.isfinite(result.last_losses["loss"])
    assert dtypes == {torch.bfloat16}  # the forward really ran under bf16 autocast


def test_fp16_autocast_on_cpu_trains_with_a_grad_scaler(tmp_path):
    model = ToyModel()
    dtypes = set()
    model.head.register_forward_hook(lambda module, args, output: dtypes.add(output.dtype))
    trainer = toy_trainer(tmp_path / "run", model=model, precision="fp16", epochs=1)
    assert trainer.scaler.is_enabled()
    result = trainer.fit()
    assert result.step == 6 and math.isfinite(result.last_losses["loss"])
    assert dtypes == {torch.float16}


def test_auto_precision_and_determinism_follow_the_device(tmp_path):
    cfg = TrainConfig()
    assert cfg.precision == "auto" and cfg.deterministic is None and cfg.tf32
    # CPU runs stay fp32 and bit-identical; CUDA defaults to bf16 (fp16 without bf16) and fast kernels
    assert cfg.resolve_precision("cpu") == "fp32" and cfg.resolve_deterministic("cpu") is True
    assert cfg.resolve_deterministic("cuda") is False
    assert TrainConfig(deterministic=True).resolve_deterministic("cuda") is True
    assert TrainConfig(precision="fp32").resolve_precision("cuda") == "fp32"
    trainer = toy_trainer(tmp_path / "run", epochs=1)
    assert trainer.precision == "fp32" and not trainer.scaler.is_enabled()
    assert torch.are_deterministic_algorithms_enabled()


def test_too_small_training_set_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="training set too small"):
        Trainer(ToyModel(), ToyPairs(n=3), TrainConfig(batch_size=4, num_workers=0), tmp_path)


def test_resolve_checkpoint_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_state.pt"):
        resolve_checkpoint(tmp_path)


# ---- `sgmn train` end to end: real sgmn-tiny, synthetic LPR4M-layout data ----------------------


@pytest.fixture(scope="module")
def tiny_lpr(tmp_path_factory):
    from sgmn.data.synthetic import generate, preset

    root = tmp_path_factory.mktemp("synth")
    generate(root, preset("easy", rooms=3, products_per_room=4, clips_per_product=2, frames_per_clip=4, image_size=64), progress=False)
    return root


def run_cli(*args):
    from typer.testing import CliRunner

    from sgmn.cli import app

    result = CliRunner().invoke(app, ["train", *map(str, args)])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


def cli_args(data, out, cache, *extra):
    return [
        "--data", data, "--format", "lpr4m", "--model", "sgmn-tiny", "--out", out, "--epochs", "3",
        "--batch-size", "4", "--seed", "3",
        "--set", "train.num_workers=0", "--set", "train.log_every=1", "--set", f"train.text_cache_dir={cache}",
        "--set", "model.vision.layers=1", "--set", "model.num_frames=4", "--set", "train.val_batch_size=8",
        *extra,
    ]


def test_cli_train_stop_and_resume_equals_uninterrupted(tiny_lpr, tmp_path):
    cache = tmp_path / "text-cache"
    full, part = tmp_path / "full", tmp_path / "part"
    run_cli(*cli_args(tiny_lpr, full, cache))

    # the run folder of docs/architecture.md
    model_cfg = json.loads((full / "config.json").read_text())
    assert model_cfg["vision"]["layers"] == 1 and model_cfg["num_frames"] == 4  # --set model.* applied
    assert json.loads((full / "train_config.json").read_text())["seed"] == 3
    for name in ("epoch-001", "epoch-002", "epoch-003", "last", "best"):
        assert (full / name / "model.safetensors").is_file() and (full / name / "config.json").is_file()
    rows = [json.loads(line) for line in (full / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    steps = [r for r in rows if r["kind"] == "step"]
    # 3 rooms: one held out for validation, 2 x 4 products x 2 clips = 16 pairs = 4 steps of 4
    assert [r["step"] for r in epochs] == [4, 8, 12]
    assert {"txt", "base", "gnn", "reg", "pair"} <= set(steps[0]["losses"])
    # L_pair is logged beside its chance level ln(1 + k) (k = 3 mined negatives), L_reg beside it
    for r in rows:
        assert r["pair_chance"] == pytest.approx(math.log(1 + 3)) and "reg" in r["losses"], r
    assert all("R@1" in r["val"] and r["val"]["num_queries"] == 8 for r in epochs)
    best_epoch = max(epochs, key=lambda r: (r["val"]["R@1"], -r["epoch"]))["epoch"]
    best, chosen = weights(full / "best"), weights(full / f"epoch-{best_epoch:03d}")
    assert all(torch.equal(best[k], chosen[k]) for k in best)

    out = run_cli(*cli_args(tiny_lpr, part, cache, "--max-steps", "8"))
    assert "stopped by --max-steps" in out
    assert not (part / "epoch-003").exists()
    run_cli("--data", tiny_lpr, "--format", "lpr4m", "--resume", part / "epoch-002")  # settings from the checkpoint
    a, b = weights(full / "last"), weights(part / "last")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    # not vacuous: the third epoch moved the weights well beyond that tolerance
    first = weights(full / "epoch-002")
    assert max((a[k] - first[k]).abs().max().item() for k in a) > 1e-4
    # the resumed run continued the log (steps 9-12), it did not start over
    resumed_steps = [json.loads(line)["step"] for line in (part / "log.jsonl").read_text().splitlines()]
    assert resumed_steps[-1] == 12 and resumed_steps.count(1) == 1


def test_cli_rejects_unprefixed_unknown_set_key(tiny_lpr, tmp_path):
    from typer.testing import CliRunner

    from sgmn.cli import app

    result = CliRunner().invoke(app, ["train", "--data", str(tiny_lpr), "--model", "sgmn-tiny", "--out", str(tmp_path / "r"), "--set", "layers=2"])
    assert result.exit_code != 0
    assert "prefix the key" in result.output and "layers" in result.output


def test_validation_holds_out_whole_rooms_deterministically(tiny_lpr):
    from sgmn.data.readers import read_dataset

    data = read_dataset(tiny_lpr, "lpr4m")
    split, name = split_validation(data, TrainConfig(val_fraction=0.34))
    again, _ = split_validation(data, TrainConfig(val_fraction=0.34, seed=99))
    assert name == "val" and split.splits["val"] == again.splits["val"]
    train_rooms = {split.clips[c].room_id for c in split.splits["train"]}
    val_rooms = {split.clips[c].room_id for c in split.splits["val"]}
    assert len(val_rooms) == 1 and not (train_rooms & val_rooms)
    assert sorted(split.splits["train"] + split.splits["val"]) == sorted(data.splits["train"])
    assert split.splits["test"] == data.splits["test"]
    assert split_validation(data, TrainConfig(val_fraction=0.0))[1] is None


_DETERMINISM_SCRIPT = """
import hashlib, sys, torch
torch.set_num_threads(2)
from sgmn.train import TrainConfig, train
cfg = TrainConfig(epochs=1, max_steps=3, batch_size=8, lr=1e-3, backbone_lr_factor=1.0, num_workers=0,
                  val_fraction=0.0, seed=0, deterministic={det}, text_cache_dir=sys.argv[2] + "-text")
train(sys.argv[1], "lpr4m", "sgmn-tiny", sys.argv[2], cfg)
print(hashlib.sha1(open(sys.argv[2] + "/last/model.safetensors", "rb").read()).hexdigest())
"""


def test_two_processes_with_the_same_seed_train_bit_identical_weights(tmp_path):
    """Across processes and with 2 threads (CPU kernels otherwise split reductions differently)."""
    import os
    import subprocess
    import sys

    from sgmn.data.synthetic import generate, preset

    data = tmp_path / "data"
    generate(data, preset("easy", rooms=2, products_per_room=4, clips_per_product=2, frames_per_clip=3), progress=False)
    script = tmp_path / "run.py"
    script.write_text(_DETERMINISM_SCRIPT.format(det=True))
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")
    hashes = []
    for i in range(2):
        done = subprocess.run([sys.executable, str(script), str(data), str(tmp_path / f"run{i}")],
                              capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        hashes.append(done.stdout.strip().splitlines()[-1])
    assert hashes[0] == hashes[1]


# ---- GPU-oriented options, exercised on CPU -----------------------------------------------------


def test_activation_checkpointing_gives_the_same_gradients(monkeypatch):
    from sgmn.train.loop import prepare_backbone
    from test_model import make_batch, tiny

    grads, used = [], []
    real_checkpoint = torch.utils.checkpoint.checkpoint

    def spy(*args, **kwargs):
        used.append(1)
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", spy)
    for checkpointing in (False, True):
        model = tiny(**{"vision.layers": 2, "dropout": 0.0, "use_gci": False})  # GCI checkpoints its own blocks
        prepare_backbone(model, compile=False, activation_checkpointing=checkpointing)
        model(make_batch())["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert len(used) >= 2  # the layers really went through checkpoint
    assert grads[0].keys() == grads[1].keys() and any(k.startswith("backbone.vision_model") for k in grads[0])
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-6, msg=name)


def test_options_without_a_backbone_are_a_clear_error(tmp_path):
    class NoBackbone(ToyModel):
        def __init__(self):
            super().__init__()
            del self.backbone

    with pytest.raises(ValueError, match="activation_checkpointing.*has none"):
        toy_trainer(tmp_path / "run", model=NoBackbone(), activation_checkpointing=True)


def test_compile_option_trains_like_eager(tmp_path):
    # torch.compile on the tiniest model (slow to compile on a CPU, fast to run): same weights.
    finals = []
    for name, compile in (("eager", False), ("compiled", True)):
        model = ToyModel()
        model.dropout.p = 0.0
        trainer = toy_trainer(tmp_path / name, model=model, epochs=1, compile=compile)
        result = trainer.fit()
        assert result.step == 6 and math.isfinite(result.last_losses["loss"])
        finals.append(weights(tmp_path / name / "last"))
    compiled_modules = [m for m in model.modules() if hasattr(m, "_compiled_call_impl") and m._compiled_call_impl is not None]
    assert compiled_modules, "compile=True did not compile the backbone"
    for key, value in finals[0].items():
        torch.testing.assert_close(finals[1][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_text_cache_fill_encodes_only_this_ranks_share(tiny_lpr, tmp_path, monkeypatch):
    # Under DDP each rank encodes every world_size-th text into the shared cache; together they
    # cover every text exactly once (no rank encodes the corpus alone while the others wait).
    from sgmn.data.readers import read_dataset
    from sgmn.text import CachedTextEncoder
    from sgmn import distributed as dist_utils
    from sgmn.train.loop import _fill_text_cache

    class Counting:
        name, dim = "counting", 4

        def __init__(self):
            self.seen = []

        def encode(self, texts):
            self.seen += list(texts)
            return np.ones((len(texts), 4), dtype=np.float32), np.ones(len(texts), dtype=bool)

    data = read_dataset(tiny_lpr, "lpr4m")
    seen = []
    for rank in range(2):
        monkeypatch.setattr(dist_utils, "rank", lambda r=rank: r)
        monkeypatch.setattr(dist_utils, "world_size", lambda: 2)
        inner = Counting()
        _fill_text_cache(CachedTextEncoder(inner, tmp_path / "cache"), data, ["train", "test"])
        seen.append(inner.seen)
    assert seen[0] and seen[1] and not set(seen[0]) & set(seen[1])
    texts = {c.asr for c in data.clips.values() if c.asr} | {p.title for p in data.products.values() if p.title}
    assert set(seen[0]) | set(seen[1]) == texts
