"""The zoo's subcommands of `fastdet`: train, eval, detect, shapes and models (see `fastdet <command> -h`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _ints(value: str) -> tuple[int, ...]:
    return tuple(int(v) for v in value.split(",") if v.strip())


def _floats(value: str) -> tuple[float, ...]:
    return tuple(float(v) for v in value.split(",") if v.strip())


def _model_arg(value: str) -> tuple[str, object]:
    """`key=value` with a Python literal value (`box_batch_size_per_image=128`, `box_score_thresh=0.3`)."""
    import ast

    key, sep, raw = value.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    try:
        return key, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return key, raw  # a bare string


def _model_kwargs(args) -> dict:
    kwargs = dict(args.model_arg or [])
    if args.min_size is not None:
        kwargs["min_size"] = args.min_size
    if args.max_size is not None:
        kwargs["max_size"] = args.max_size
    return kwargs


def _train(args) -> int:
    from .trainer import TrainConfig, fit

    cfg = TrainConfig(model=args.model, data=args.data, output=args.output, train_split=args.train_split,
                      val_split=args.val_split, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      optimizer=args.optimizer, weight_decay=args.weight_decay, lr_schedule=args.lr_schedule,
                      lr_steps=args.lr_steps, warmup_iters=args.warmup_iters, clip_grad=args.clip_grad, amp=args.amp,
                      device=args.device, workers=args.workers, seed=args.seed, eval_every=args.eval_every,
                      resume=args.resume, weights=args.weights, model_kwargs=_model_kwargs(args),
                      shapes_images=args.shapes_images, shapes_image_size=args.shapes_image_size,
                      progress=not args.no_progress, loss=args.loss, aux_weight=args.aux_weight,
                      crop_size=args.crop_size, scale_range=args.scale_range)
    result = fit(cfg)
    _print_metrics(result.get("metrics"), cfg.model)
    print(f"checkpoint: {result['checkpoint']}")
    return 0


def _print_metrics(metrics, model_name: str) -> None:
    if metrics:
        from .tasks import for_model

        print(for_model(model_name).format_metrics(metrics))


def _eval(args) -> int:
    from . import checkpoint, distributed
    from .tasks import for_model
    from .trainer import TrainConfig, _loader

    state = checkpoint.load(args.checkpoint)
    ctx = distributed.init(args.device)
    try:
        task = for_model(state["model_name"])
        model = checkpoint.build_model(state).to(ctx.device)
        dataset = task.dataset(args.data, args.split, train=False)
        if len(dataset.classes) != len(state["classes"]):
            raise ValueError(f"the checkpoint was trained on {len(state['classes']) - 1} classes, "
                             f"{args.data!r} has {len(dataset.classes) - 1}")
        loader = _loader(dataset, TrainConfig(batch_size=args.batch_size, workers=args.workers), ctx, train=False,
                         task=task)
        metrics = task.evaluate(model, loader, dataset, ctx, progress=not args.no_progress, backend=args.backend)
    finally:
        distributed.shutdown(ctx)
    if ctx.is_main:
        _print_metrics(metrics, state["model_name"])
        if args.json:
            Path(args.json).write_text(json.dumps(metrics, indent=2))
            print(f"wrote {args.json}")
    return 0


def _detect(args) -> int:
    from fastdet import models

    from . import checkpoint, distributed
    from .detect import detect, find_images, segment

    state = checkpoint.load(args.checkpoint)
    model = checkpoint.build_model(state)
    images = find_images(args.inputs)
    if models.model_task(state["model_name"]) == "semantic_segmentation":
        records = segment(model, images, args.output, classes=state["classes"],
                          device=distributed.resolve_device(args.device), progress=not args.no_progress)
        print(f"segmented {len(records)} image(s); wrote {args.output}/ (images, class maps and segmentation.json)")
        return 0
    records = detect(model, images, args.output, classes=state["classes"], device=distributed.resolve_device(args.device),
                     score_thresh=args.score_thresh, progress=not args.no_progress)
    total = sum(len(r["detections"]) for r in records)
    print(f"{total} detection(s) in {len(records)} image(s); wrote {args.output}/ (images and detections.json)")
    return 0


def _shapes(args) -> int:
    from fastdet.data import generate_shapes

    path = generate_shapes(args.root, split=args.split, num_images=args.num_images, image_size=args.image_size,
                           seed=args.seed, progress=not args.no_progress)
    print(f"wrote {path}")
    return 0


def _models(args) -> int:
    from fastdet import models

    tags = {"instance_segmentation": "  (masks)", "semantic_segmentation": "  (semantic segmentation)"}
    for name in models.list_models():
        print(f"{name}{tags.get(models.model_task(name), '')}")
    return 0


def add_subcommands(sub) -> None:
    """Adds train / eval / detect / shapes / models to the `fastdet` parser's subparsers (nothing is
    imported until a command runs: `fastdet info` must work with torch alone)."""
    sub.add_parser("models", help="list the zoo's model names").set_defaults(func=_models)
    t = sub.add_parser("train", help="train a zoo detector or segmenter (the generated shapes dataset by default)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Train a zoo detector or semantic segmenter. Under torchrun (e.g. `torchrun --nproc_per_node 2 -m "
                                   "fastdet.cli train ...`) the same command trains with DistributedDataParallel.")
    t.add_argument("--model", default="fasterrcnn_resnet18_fpn", metavar="NAME",
                   help="a zoo model (`fastdet models` lists them)")
    t.add_argument("--data", help="COCO-format folder (<root>/<split>/, <root>/annotations/instances_<split>.json); "
                                  "segmenters also read <root>/<split>/images + masks/ (PNG label maps) and Pascal "
                                  "VOC; default: generate the shapes dataset under OUTPUT/shapes")
    t.add_argument("--output", default="runs/train", help="folder for last.pt, log.jsonl and the generated data")
    t.add_argument("--train-split", default="train")
    t.add_argument("--val-split", default="val", help="evaluated after epochs when present")
    t.add_argument("--epochs", type=int, default=12)
    t.add_argument("--batch-size", type=int, default=4, help="images per process and step")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw",
                   help="AdamW trains the zoo's models from scratch well; to fine-tune torchvision weights the "
                        "usual recipe is --optimizer sgd --lr 0.02 (16 images per step)")
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--lr-schedule", choices=("multistep", "cosine", "constant"), default="multistep")
    t.add_argument("--lr-steps", type=_ints, help="epochs at which multistep divides the lr by 10 (default: 2/3 and 8/9 of --epochs)")
    t.add_argument("--warmup-iters", type=int, default=100, help="iterations of linear lr warm-up")
    t.add_argument("--clip-grad", type=float, help="clip the gradient norm to this value")
    t.add_argument("--amp", action="store_true", help="mixed precision (fp16 + loss scaling on CUDA, bf16 on CPU)")
    t.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    t.add_argument("--workers", type=int, default=2, help="data-loading processes")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--eval-every", type=int, default=1, help="epochs between evaluations (0: only after the last)")
    t.add_argument("--resume", metavar="CHECKPOINT", help="continue from a checkpoint (e.g. OUTPUT/last.pt)")
    t.add_argument("--weights", metavar="PATH", help="start from a local state dict (e.g. a converted torchvision checkpoint)")
    t.add_argument("--min-size", type=int, help="model input: shorter side resized to this (default: the builder's "
                                                "800, or the image size on the generated shapes data); SSD models "
                                                "resize to a fixed size instead: --model-arg 'size=(W,H)'")
    t.add_argument("--max-size", type=int, help="model input: longer side at most this")
    t.add_argument("--model-arg", type=_model_arg, action="append", metavar="KEY=VALUE",
                   help="another builder keyword argument (repeatable), e.g. representation_size=256, "
                        "box_batch_size_per_image=128, rpn_post_nms_top_n_train=300")
    t.add_argument("--shapes-images", type=int, default=256, help="generated training images (validation: a quarter)")
    t.add_argument("--shapes-image-size", type=int, default=128)
    t.add_argument("--loss", choices=("ce", "dice", "ce_dice", "focal"), default="ce",
                   help="segmenters: the per-pixel loss (ignore index 255)")
    t.add_argument("--aux-weight", type=float, default=0.5, help="segmenters: weight of the auxiliary classifier's loss")
    t.add_argument("--crop-size", type=int, help="segmenters: training crop (default: the shapes image size, else 480)")
    t.add_argument("--scale-range", type=_floats, default=(0.5, 2.0), metavar="LOW,HIGH",
                   help="segmenters: random rescale of the shorter side to LOW..HIGH x crop size before the crop "
                        "(1,1: none)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="COCO metrics (detectors) or mIoU (segmenters) of a checkpoint on a data folder",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    e.add_argument("checkpoint", help="a checkpoint written by `fastdet train`")
    e.add_argument("--data", required=True, help="data folder (as for train --data)")
    e.add_argument("--split", default="val")
    e.add_argument("--batch-size", type=int, default=4)
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--device")
    e.add_argument("--backend", choices=("auto", "pycocotools", "faster_coco_eval"), default="auto")
    e.add_argument("--json", metavar="PATH", help="also write the metrics as JSON")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=_eval)

    d = sub.add_parser("detect", help="draw a checkpoint's detections (or class maps) on images; write images + JSON",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d.add_argument("checkpoint", help="a checkpoint written by `fastdet train`")
    d.add_argument("inputs", nargs="+", help="image files or folders")
    d.add_argument("--output", default="runs/detect")
    d.add_argument("--score-thresh", type=float, default=0.5)
    d.add_argument("--device")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=_detect)

    s = sub.add_parser("shapes", help="generate the synthetic shapes dataset (COCO format)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("root")
    s.add_argument("--split", default="train")
    s.add_argument("--num-images", type=int, default=256)
    s.add_argument("--image-size", type=int, default=128)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_shapes)


def run(func, args) -> int:
    """Runs a zoo subcommand; user errors (bad paths, formats, mismatched checkpoints) become one
    `fastdet <cmd>: <reason>` line on stderr and exit status 2 instead of a traceback."""
    try:
        return func(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"fastdet {args.command}: {e}", file=sys.stderr)
        return 2
