"""`fastdet train`: training a zoo model on a data folder (the generated shapes dataset by default).

One loop for every zoo model; its task (fastdet.engine.tasks: detection or semantic segmentation)
decides how the data is read and batched, how a batch gives a dict of losses, and the evaluation
(COCO mAP or mIoU). SGD or AdamW,
linear warm-up then step or cosine decay per iteration, optional mixed precision (fp16 + GradScaler
on CUDA, bf16 on CPU), gradient clipping, a checkpoint after every epoch (`last.pt`, resumable),
evaluation on the validation split, a progress bar with the losses and the ETA, and a
`log.jsonl` with one line per epoch. Under `torchrun` the same command trains with DDP.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from . import checkpoint, distributed, tasks
from .progress import bar
from .schedule import WarmupSchedule


@dataclass
class TrainConfig:
    model: str = "fasterrcnn_resnet18_fpn"
    data: str | None = None            # data folder (COCO; segmenters also image+mask / VOC); None -> generated shapes
    output: str = "runs/train"
    train_split: str = "train"
    val_split: str = "val"             # evaluated after epochs when the folder has it
    epochs: int = 12
    batch_size: int = 4                # per process
    lr: float = 1e-3
    optimizer: str = "adamw"           # adamw | sgd (SGD, lr 0.02 for 16 images, to fine-tune torchvision weights)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: str = "multistep"     # multistep | cosine | constant
    lr_steps: tuple[int, ...] | None = None  # epochs; default: 2/3 and 8/9 of `epochs`
    warmup_iters: int = 100
    clip_grad: float | None = None     # max gradient norm
    amp: bool = False
    device: str | None = None          # None -> cuda if available
    workers: int = 2
    seed: int = 0
    eval_every: int = 1                # epochs; 0 -> only after the last
    resume: str | None = None          # a checkpoint (e.g. output/last.pt)
    weights: str | None = None         # a local state dict to start from (builder's weights=)
    model_kwargs: dict = field(default_factory=dict)  # e.g. min_size, max_size (over SHAPES_MODEL_KWARGS on shapes)
    shapes_images: int = 256           # size of the generated training split (val: a quarter)
    shapes_image_size: int = 128
    progress: bool = True
    # semantic segmenters only
    loss: str = "ce"                   # ce | dice | ce_dice | focal (fastdet.models.segmentation.losses)
    aux_weight: float = 0.5            # weight of the auxiliary classifier's loss
    crop_size: int | None = None       # training crop; None -> the shapes image size, or 480 on other data
    scale_range: tuple[float, float] = (0.5, 2.0)  # random rescale before the crop, x crop_size; (1, 1): none


# Builder arguments used when training on the generated shapes data (small images, objects of
# ~10-120 px, from scratch); the user's model_kwargs override them. Inputs are not upscaled to
# torchvision's 800 px, the box head is 256 wide instead of 1024 (its two FC layers would otherwise
# take most of a CPU step), the mask head 64 instead of 256, and fewer proposals/RoIs are kept per
# image. A U-Net is 16 channels wide at full resolution instead of 64 (a 128 px batch is then
# ~16x cheaper, and 3 shape classes need no more). SSDlite's default boxes span 0.1-0.9 of the image
# instead of 0.2-0.95 (objects from 8% of the side). Keyed by the model family (the name's first part).
_RCNN_SMALL = dict(representation_size=256, box_batch_size_per_image=128, rpn_pre_nms_top_n_train=600,
                   rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100)
# Dense detectors: FPN and heads 128 wide instead of 256 and head towers of 2 convs instead of 4
# (at 256 channels x 4 convs on P3 they cost ~3x the ResNet-18 body on 128 px inputs), fewer
# candidates and detections, score threshold 0.05 (FCOS's default 0.2 hides the low scores an
# evaluation's recall needs). RetinaNet: anchors 16..256 px (x 1, 1.26, 1.59 per level) instead of
# 32..512 for objects of ~8-128 px: 2x the stride instead of torchvision's 4x (small objects need a
# small P3 anchor), but not 1x (8..128 px: half of the objects then match a single anchor, a too
# sparse signal: 2.4 positives per object against 6.7 with 16..256), and GroupNorm in the head
# towers as v2 (from scratch the v1 towers without a norm do not learn: box AP50 0.000 after 384
# steps where the GroupNorm heads reach 0.22, see tests/engine/test_learning_dense.py).
_DENSE_SMALL = dict(num_convs=2, fpn_channels=128, topk_candidates=300, detections_per_img=100, score_thresh=0.05)
SHAPES_MODEL_KWARGS = {"fasterrcnn": _RCNN_SMALL, "maskrcnn": dict(_RCNN_SMALL, mask_head_width=64),
                       "retinanet": dict(_DENSE_SMALL, anchor_sizes=(16, 32, 64, 128, 256), head_norm="group"),
                       "fcos": _DENSE_SMALL,
                       "gfl": _DENSE_SMALL, "borderdet": _DENSE_SMALL,
                       "unet": dict(base_width=16), "ssdlite320": dict(min_ratio=0.1, max_ratio=0.9)}
# Families whose classifier has no background class: they get the K real classes, and labels
# 1..K of fastdet's datasets as class channel + 1.
NO_BACKGROUND = frozenset({"yolox", "cornernet"})


def model_kwargs_for(cfg: TrainConfig, num_classes: int) -> dict:
    """The builder's keyword arguments: num_classes from the data (without the background and with
    label_offset=1 for the NO_BACKGROUND families), the shapes preset when the data is generated
    (the task's, then SHAPES_MODEL_KWARGS), then the user's model_kwargs."""
    kwargs: dict = {}
    family = cfg.model.split("_")[0]
    if cfg.data is None:
        kwargs.update(tasks.for_model(cfg.model).model_kwargs(cfg, generated=True))
        kwargs.update(SHAPES_MODEL_KWARGS.get(family, {}))
    kwargs.update(cfg.model_kwargs)
    if family in NO_BACKGROUND:
        kwargs.update(num_classes=num_classes - 1, label_offset=1)
    else:
        kwargs["num_classes"] = num_classes
    return kwargs


def _check(cfg: TrainConfig) -> None:
    from fastdet import models

    if cfg.model not in models.list_models():
        raise ValueError(f"unknown model {cfg.model!r}; choose from {', '.join(models.list_models())}")
    for name in ("epochs", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if not cfg.lr > 0:
        raise ValueError(f"lr must be > 0, got {cfg.lr}")
    if cfg.optimizer not in ("sgd", "adamw"):
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}")
    if cfg.warmup_iters < 0 or cfg.workers < 0 or cfg.eval_every < 0:
        raise ValueError("warmup_iters, workers and eval_every must be >= 0")
    if cfg.clip_grad is not None and not cfg.clip_grad > 0:
        raise ValueError(f"clip_grad must be > 0, got {cfg.clip_grad}")
    from fastdet.models.segmentation.losses import LOSSES

    if cfg.loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {cfg.loss!r}")
    if cfg.crop_size is not None and cfg.crop_size < 1:
        raise ValueError(f"crop_size must be >= 1, got {cfg.crop_size}")
    if not cfg.aux_weight >= 0:
        raise ValueError(f"aux_weight must be >= 0, got {cfg.aux_weight}")


def prepare_data(cfg: TrainConfig, ctx: distributed.Context, task) -> Path:
    """The data folder: cfg.data (checked by the task), or shapes generated once under output/shapes
    (COCO layout, which every task reads)."""
    if cfg.data is not None:
        root = Path(cfg.data)
        task.check_data(root, cfg.train_split)
        return root
    from fastdet.data import generate_shapes

    root = Path(cfg.output) / "shapes"
    if ctx.is_main:
        for split, n, seed in ((cfg.train_split, cfg.shapes_images, cfg.seed),
                               (cfg.val_split, max(8, cfg.shapes_images // 4), cfg.seed + 10_000)):
            if not (root / "annotations" / f"instances_{split}.json").is_file():
                generate_shapes(root, split=split, num_images=n, image_size=cfg.shapes_image_size, seed=seed,
                                progress=cfg.progress)
    distributed.barrier(ctx)
    return root


def _loader(dataset, cfg: TrainConfig, ctx: distributed.Context, *, train: bool, task) -> DataLoader:
    if ctx.distributed and train:
        sampler = DistributedSampler(dataset, shuffle=True, seed=cfg.seed)
    elif ctx.distributed:
        # every rank evaluates its own share, each sample once (DistributedSampler would repeat
        # samples to even the shares out, and a repeated image would count twice in the metrics)
        sampler = range(ctx.rank, len(dataset), ctx.world_size)
    elif train:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(cfg.seed))
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                      collate_fn=task.collate, persistent_workers=False)


def _optimizer(model, cfg: TrainConfig):
    # No weight decay on norm layers and biases (common practice since Goyal et al. 2017).
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _log_line(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def fit(cfg: TrainConfig) -> dict:
    """Trains as configured and returns {"epoch", "losses", "metrics", "checkpoint", "iterations",
    "world_size"} of the last epoch (the same record `log.jsonl` gets per epoch)."""
    from fastdet import models

    _check(cfg)
    ctx = distributed.init(cfg.device)
    try:
        return _fit(cfg, ctx, models)
    finally:
        distributed.shutdown(ctx)


def _fit(cfg, ctx, models) -> dict:
    torch.manual_seed(cfg.seed + ctx.rank)
    out = Path(cfg.output)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    task = tasks.for_model(cfg.model)
    root = prepare_data(cfg, ctx, task)
    train_set = task.dataset(root, cfg.train_split, train=True, cfg=cfg)
    has_val = task.has_split(root, cfg.val_split)
    val_set = task.dataset(root, cfg.val_split, train=False, cfg=cfg) if has_val else None
    train_loader = _loader(train_set, cfg, ctx, train=True, task=task)
    val_loader = _loader(val_set, cfg, ctx, train=False, task=task) if has_val else None

    state = checkpoint.load(cfg.resume) if cfg.resume else None
    model_kwargs = model_kwargs_for(cfg, len(train_set.classes))
    if state is not None:
        if state["model_name"] != cfg.model:
            raise ValueError(f"--resume {cfg.resume!r} holds a {state['model_name']!r} model, not {cfg.model!r}")
        if state["model_kwargs"] != model_kwargs:
            raise ValueError(f"--resume {cfg.resume!r} was trained with {state['model_kwargs']}, not {model_kwargs}")
    build_kwargs = dict(model_kwargs)
    if cfg.weights and state is None:
        build_kwargs["weights"] = cfg.weights
    model = models.build_model(cfg.model, **build_kwargs).to(ctx.device)
    optimizer = _optimizer(model, cfg)
    iters_per_epoch = len(train_loader)
    total = cfg.epochs * iters_per_epoch
    steps = cfg.lr_steps if cfg.lr_steps is not None else (math.ceil(cfg.epochs * 2 / 3), math.ceil(cfg.epochs * 8 / 9))
    scheduler = WarmupSchedule(optimizer, total_iters=total, warmup_iters=min(cfg.warmup_iters, total),
                               schedule=cfg.lr_schedule, milestones=tuple(s * iters_per_epoch for s in steps))
    use_scaler = cfg.amp and ctx.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    start_epoch = 0
    if state is not None:
        checkpoint.load_model_state(model, state["model"], source=f"--resume {cfg.resume!r}")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["lr_scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch = state["epoch"]
        if start_epoch >= cfg.epochs:
            raise ValueError(f"--resume {cfg.resume!r} already completed {start_epoch} epoch(s); ask for more --epochs")
    core = model
    if ctx.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    amp_dtype = torch.float16 if ctx.device.type == "cuda" else torch.bfloat16

    result: dict = {}
    for epoch in range(start_epoch, cfg.epochs):
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        losses = _train_one_epoch(model, task, train_loader, optimizer, scheduler, scaler, ctx, cfg, epoch, amp_dtype)
        ckpt_path = out / "last.pt"
        if ctx.is_main:
            checkpoint.save(ckpt_path, model=core, model_name=cfg.model, model_kwargs=model_kwargs,
                            classes=train_set.classes, label_to_cat_id=getattr(train_set, "label_to_cat_id", {}),
                            epoch=epoch + 1,
                            optimizer=optimizer, lr_scheduler=scheduler, scaler=scaler,
                            config=_jsonable(asdict(cfg)))
        metrics = None
        last = epoch + 1 == cfg.epochs
        if val_loader is not None and (last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0)):
            metrics = task.evaluate(core, val_loader, val_set, ctx, progress=cfg.progress)
        result = {"epoch": epoch + 1, "losses": losses, "metrics": metrics, "checkpoint": str(ckpt_path),
                  "iterations": iters_per_epoch, "world_size": ctx.world_size}
        if ctx.is_main:
            _log_line(out / "log.jsonl", {**result, "lr": optimizer.param_groups[0]["lr"], "time": time.time()})
        distributed.barrier(ctx)
    return result


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))


def _train_one_epoch(model, task, loader, optimizer, scheduler, scaler, ctx, cfg, epoch, amp_dtype) -> dict[str, float]:
    model.train()
    sums: dict[str, float] = {}
    count = 0
    with bar(cfg.progress and ctx.is_main) as pb:
        row = pb.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=len(loader), info="")
        for images, targets in loader:
            images, targets = task.to_device(images, targets, ctx.device)
            with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=cfg.amp):
                loss_dict = task.losses(model, images, targets, cfg)
            loss = sum(loss_dict.values())
            if not torch.isfinite(loss):
                raise RuntimeError(f"fastdet train: the loss became {loss.item()} at epoch {epoch + 1}, iteration "
                                   f"{count + 1} ({ {k: round(v.item(), 4) for k, v in loss_dict.items()} }); "
                                   "lower --lr or raise --warmup-iters")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            count += 1
            for k, v in loss_dict.items():
                sums[k] = sums.get(k, 0.0) + v.item()
            sums["loss"] = sums.get("loss", 0.0) + loss.item()
            pb.update(row, advance=1, info=f"loss {sums['loss'] / count:.3f} lr {optimizer.param_groups[0]['lr']:.2e}")
    return distributed.mean_across_ranks({k: v / max(1, count) for k, v in sums.items()}, ctx)
