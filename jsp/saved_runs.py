"""Working with saved models: evaluation (jsp-eval), export (jsp-export) and segmentation of
unlabelled images (jsp-predict).

Only this module and the pipeline read configs; both take the checkpoint folder a run wrote.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from jsp.data import prepare
from jsp.data.io import read_image, set_max_pixels
from jsp.data.transforms import in_channels
from jsp.engine.evaluate import evaluate, write_per_image
from jsp.engine.inference import find_images, fov_of, segment, write_prediction
from jsp.errors import JSPError
from jsp.metrics import cost_report
from jsp.models import pad_multiple, padded_size
from jsp.models.saved import dataset_of, load_model
from jsp.provenance import hydra_overrides, provenance
from jsp.registry import table
from jsp.run_config import build_dataset
from jsp.engine.runtime import resolve_device

log = logging.getLogger("jsp")
REPORTED = ("miou", "f1", "auc", "se", "sp", "acc", "params", "macs", "weight_mb")
# AUC bins probabilities 10^4 ways: another thread count can move a few pixels across a bin
# edge (measured 1e-8 on DRIVE); the counts behind the other metrics are exact.
TOLERANCE = {"auc": 1e-6}


def model_folder(path: str) -> Path:
    """A saved model folder, given it or a run dir (whose final model is taken)."""
    p = Path(path).expanduser()
    if (p / "checkpoints" / "final" / "model.json").is_file():
        return p / "checkpoints" / "final"
    return p


def saved_data(cfg: DictConfig, meta: dict):
    """(dataset, processing spec): from the command line (``dataset=NAME``, a trusted config) or
    from the registry key and checked arguments recorded in model.json, never a target from the file."""
    if cfg.get("dataset"):
        return build_dataset(cfg.dataset)
    entry, args, process = dataset_of(meta)  # load_model has already refused a bad entry
    return entry.build(**args), process


def evaluate_saved(cfg: DictConfig, out_dir: Path) -> dict:
    """Evaluate a saved model on the test split; write eval_metrics.json into ``out_dir``."""
    folder = model_folder(cfg.checkpoint)
    device = resolve_device(cfg.device)
    set_max_pixels(cfg.get("max_image_pixels"))
    model, meta = load_model(folder, device, int(cfg.max_model_params))
    data, process = saved_data(cfg, meta)
    c_in = in_channels(process["channels"])
    if c_in != meta.get("in_channels", c_in):
        raise JSPError(f"the model takes {meta['in_channels']} input channels but dataset.process.channels="
                       f"{process['channels']} gives {c_in}")
    test = prepare(data.test, process["channels"], process["clahe"])
    metrics, _, per_image = evaluate(model, test, data.num_classes, device, data.class_names, desc="test",
                                     ignore_index=data.ignore_index)
    metrics.update(cost_report(model, c_in, data.full_size, cfg.latency_s, device))
    saved = {k: v for k, v in meta.get("metrics", {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    same = cfg.get("dataset") is None and all(
        k not in saved or abs(saved[k] - metrics[k]) <= TOLERANCE.get(k, 1e-9) * max(1.0, abs(saved[k]))
        for k in REPORTED if k in metrics)
    result = {"checkpoint": str(folder), "stage": meta.get("stage"), "metrics": metrics,
              "saved_metrics": saved, "matches_saved": same, "provenance": provenance(hydra_overrides()),
              "model_provenance": meta.get("provenance")}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval_metrics.json").write_text(json.dumps(result, indent=2, default=float))
    write_per_image(out_dir / "per_image.csv", per_image)
    line = " ".join(f"{k} {metrics[k]:.4f}" for k in REPORTED[:6] if k in metrics)
    log.info("%s (%s): %s | params %s | MACs %.3g", folder, meta.get("stage"), line, f"{metrics['params']:,}",
             metrics["macs"])
    if cfg.get("dataset") is None:
        log.info("matches the run's saved test metrics: %s", "yes" if same else "NO")
    log.info("wrote %s and per_image.csv", out_dir / "eval_metrics.json")
    return result


def export_saved(cfg: DictConfig) -> list[Path]:
    """Write TorchScript (.pt) and/or ONNX (.onnx, dynamic batch and image size) files of a saved
    model. ONNX needs the optional extra; without it that format is skipped with one line."""
    folder = model_folder(cfg.checkpoint)
    model, meta = load_model(folder, "cpu", int(cfg.max_model_params))
    model.eval()
    unknown = [f for f in cfg.formats if f not in ("torchscript", "onnx")]
    if unknown:
        raise JSPError(f"formats must be torchscript and/or onnx, got {unknown[0]!r}")
    out = Path(cfg.out) if cfg.out else folder / "export"
    out.mkdir(parents=True, exist_ok=True)
    size = list(cfg.input_size or meta.get("input_size") or [256, 256])
    size = padded_size(model, size)  # the network needs sides divisible by its stride
    example = torch.randn(1, meta.get("in_channels", 3), *size, generator=torch.Generator().manual_seed(0))
    written = []
    for fmt in cfg.formats:
        if fmt == "torchscript":
            path = out / "model.torchscript.pt"
            with torch.no_grad():
                torch.jit.trace(model, example).save(str(path))
            log.info("wrote %s (traced at 1x%dx%dx%d)", path, example.shape[1], *size)
        else:
            path = export_onnx(model, example, out / "model.onnx")
            if path is None:
                continue
        written.append(path)
    return written


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> Path | None:
    """ONNX with dynamic batch, height and width (sides must stay multiples of the model's stride),
    checked against PyTorch with onnxruntime when it is installed. None when onnx is missing."""
    try:
        import onnx  # noqa: F401  (the optional extra)
    except ImportError:
        log.warning('ONNX skipped: it needs the optional extra, pip install "jsp[export]" '
                    '(or pip install -e ".[export]" in a checkout)')
        return None
    axes = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(model, (example,), str(path), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": axes, "logits": axes}, dynamo=False)
    log.info("wrote %s (dynamic batch and image size)", path)
    try:
        import onnxruntime
    except ImportError:
        log.info("onnxruntime is not installed: the ONNX file was not run")
        return path
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    m = pad_multiple(model)
    for x in (example, torch.randn(2, example.shape[1], example.shape[2] + m, example.shape[3] + 2 * m)):
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        diff = float(abs(got - expected).max())
        if got.shape != expected.shape or diff > 1e-3 * max(1.0, float(abs(expected).max())):
            raise JSPError(f"{path}: onnxruntime differs from PyTorch on input {list(x.shape)} (max diff {diff:.3g})")
        log.info("onnxruntime matches PyTorch on input %s (max diff %.2g)", list(x.shape), diff)
    return path


def predict_saved(cfg: DictConfig) -> list[Path]:
    """Segment the images at ``cfg.input`` with a saved model; write masks into ``cfg.output``.

    Unreadable images are skipped with a warning; it fails only when no image could be segmented.
    """
    folder = model_folder(cfg.checkpoint)
    device = resolve_device(cfg.device)
    set_max_pixels(cfg.get("max_image_pixels"))
    model, meta = load_model(folder, device, int(cfg.max_model_params))
    model.eval()
    entry_name, args, process = _recorded_data(meta)
    if int(cfg.batch_size) < 1 or int(cfg.tile_size) < 16 or not 0 <= int(cfg.tile_overlap) < int(cfg.tile_size):
        raise JSPError(f"need batch_size >= 1, tile_size >= 16 and 0 <= tile_overlap < tile_size; got "
                       f"{cfg.batch_size}, {cfg.tile_size}, {cfg.tile_overlap}")
    images = find_images(Path(cfg.input).expanduser())
    out = Path(cfg.output).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    written, skipped = [], []
    for path in images:
        try:
            image = read_image(path, "RGB")
            fov = fov_of(path, image, str(cfg.fov), entry_name)
        except JSPError as e:
            log.warning("skipped %s: %s", path, e)
            skipped.append(path)
            continue
        probs = segment(model, image, fov, process, float(args.get("scale", 1.0)), device,
                        int(cfg.tile_size), int(cfg.tile_overlap), int(cfg.batch_size))
        written += write_prediction(out, path.name.split(".")[0], image, probs, fov, bool(cfg.overlay))
        log.info("%s -> %s", path.name, written[-1].parent / (path.name.split(".")[0] + ".png"))
    if len(skipped) == len(images):
        raise JSPError(f"none of the {len(images)} images at {cfg.input} could be read")
    log.info("segmented %d image(s) into %s%s", len(images) - len(skipped), out,
             f"; skipped {len(skipped)} (see the warnings)" if skipped else "")
    return written


def _recorded_data(meta: dict) -> tuple[str, dict, dict]:
    """(dataset key, its checked arguments, processing spec) recorded in model.json."""
    entry, args, process = dataset_of(meta)
    name = next(k for k, e in table("dataset").items() if e.targets == entry.targets)
    return name, args, process
