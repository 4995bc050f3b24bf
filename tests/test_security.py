"""Saved models are data: hostile model folders are refused by load_model, jsp-eval and
jsp-export with one line and exit 2; nothing they name is called, no file is created and
nothing outside jsp's own dependencies is imported."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import TINY, TINY_TRAIN, run_cli



@pytest.fixture(scope="module")
def good_model(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("good") / "run"
    out = run_cli(*TINY, "schedule=none", f"hydra.run.dir={run_dir}")
    assert out.returncode == 0, out.stdout + out.stderr
    return run_dir / "checkpoints" / "final"


def call(target: str, *args) -> dict:
    return {"_target_": target, "_args_": list(args)}


def edit_json(meta: dict, marker: Path, case: str):
    """Apply one hostile change to a format-2 model.json (returns the new content)."""
    touch = call("pathlib.Path.touch", str(marker))
    arch, data = meta["architecture"], meta["dataset"]
    if case == "nested target, depth 1":
        arch["args"]["width"] = touch
    elif case == "nested target, depth 3":
        arch["args"]["extra"] = {"a": {"b": touch}}
    elif case == "old-format builder with a nested target":
        meta.update(format="jsp-model/1", builder={"_target_": "jsp.models.UNet", **arch["args"], "extra": touch})
        meta["dataset"] = {"_target_": "jsp.data.make_synthetic", **data["args"], "process": meta["process"]}
    elif case == "old-format builder target":
        meta.update(format="jsp-model/1", builder={"_target_": "shutil.copyfile", "src": "/etc/hostname",
                                                   "dst": str(marker)})
    elif case == "dataset target":
        meta["dataset"] = touch
    elif case == "dataset target in old format":
        meta.update(format="jsp-model/1", builder={"_target_": "jsp.models.UNet", **arch["args"]})
        meta["dataset"] = {"_target_": "ftplib.FTP", "host": "127.0.0.1", "process": meta["process"]}
    elif case == "connection in a metric":
        meta["metrics"]["miou"] = call("socket.create_connection", ["127.0.0.1", 9])
    elif case == "absurd width":
        arch["args"]["width"] = 10**7
    elif case == "absurd size within ranges":
        arch["args"].update(width=4096, depth=8)
    elif case == "absurd layer width":
        meta["layers"][next(iter(meta["layers"]))]["out_channels"] = 10**9
    elif case == "unknown architecture":
        arch["name"] = "webbrowser.open"
    elif case == "layer attribute":
        meta["layers"][next(iter(meta["layers"]))]["forward"] = 1
    elif case == "huge export size":
        meta["input_size"] = [10**9, 10**9]
    elif case == "not an object":
        return [1, 2, 3]
    return meta


JSON_CASES = {  # case -> a piece of the one-line message
    "nested target, depth 1": "architecture.args.width",
    "nested target, depth 3": "architecture.args.extra.a.b._target_",
    "old-format builder with a nested target": "builder.extra._target_",
    "old-format builder target": "builder._target_: refusing to build 'shutil.copyfile'",
    "dataset target": "dataset._target_",
    "dataset target in old format": "dataset._target_: refusing to call 'ftplib.FTP'",
    "connection in a metric": "metrics.miou._target_",
    "absurd width": "architecture.args.width: 10000000 is outside",
    "absurd size within ranges": "more than max_params",
    "absurd layer width": "out_channels: expected an integer in [1, 1048576]",
    "unknown architecture": "architecture.name: expected one of",
    "layer attribute": "expected some of",
    "huge export size": "input_size[0]",
    "not an object": "expected a JSON object",
}


def weights_case(folder: Path, case: str):
    path = folder / "model.safetensors"
    if case == "truncated weights":
        path.write_bytes(path.read_bytes()[:200])
    elif case == "weights of the wrong shape":
        state = load_file(str(path))
        key = next(k for k, v in state.items() if v.dim() == 4)
        state[key] = torch.zeros(state[key].shape[0] + 3, *state[key].shape[1:])
        save_file(state, str(path))
    elif case == "weights too large":
        save_file({"huge": torch.zeros(3000, 1000)}, str(path))  # 3 M values, over the test's bound


WEIGHT_CASES = {"truncated weights": "cannot read weights", "weights of the wrong shape": "do not fit the layer spec",
                "weights too large": "more than max_params"}
CASES = {**JSON_CASES, **WEIGHT_CASES}


def hostile(good: Path, tmp_path: Path, case: str) -> tuple[Path, Path]:
    folder, marker = tmp_path / "model", tmp_path / "PWNED"
    folder.mkdir()
    for f in ("model.json", "model.safetensors"):
        (folder / f).write_bytes((good / f).read_bytes())
    if case in JSON_CASES:
        meta = edit_json(json.loads((folder / "model.json").read_text()), marker, case)
        (folder / "model.json").write_text(json.dumps(meta))
    else:
        weights_case(folder, case)
    return folder, marker


LOADER = textwrap.dedent("""
    import sys
    before = set(sys.modules)
    from jsp.errors import JSPError
    from jsp.models.saved import load_model
    try:
        load_model(sys.argv[1], max_params=int(sys.argv[2]))
        print("LOADED")
    except JSPError as e:
        print("REFUSED", e)
    print("NEW", " ".join(sorted(set(sys.modules) - before)))
""")


def load_in_fresh_process(folder: Path, bound: str) -> tuple[str, set]:
    """(first output line, modules imported by load_model) in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", LOADER, str(folder), bound], capture_output=True, text=True)
    lines = out.stdout.splitlines()
    assert len(lines) == 2, out.stdout + out.stderr
    return lines[0], set(lines[1].split()[1:])


@pytest.fixture(scope="module")
def allowed_modules(good_model) -> set:
    """What loading a good model imports: the allowlist for loading a hostile one."""
    first, modules = load_in_fresh_process(good_model, "2000000000")
    assert first == "LOADED"
    return modules


def files_under(root: Path) -> set:
    return {p for p in root.rglob("*")}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_model_is_refused_everywhere(case, good_model, allowed_modules, tmp_path):
    folder, marker = hostile(good_model, tmp_path, case)
    bound = "2000000" if case == "weights too large" else "2000000000"
    before = files_under(tmp_path)
    first, modules = load_in_fresh_process(folder, bound)
    assert first.startswith("REFUSED") and CASES[case] in first, first
    assert modules <= allowed_modules, sorted(modules - allowed_modules)
    for entry, extra in (("eval", [f"max_model_params={bound}"]), ("export", [f"max_model_params={bound}"])):
        out = run_cli(f"checkpoint={folder}", f"hydra.run.dir={tmp_path / 'out'}", f"out={tmp_path / 'exp'}"
                      if entry == "export" else "device=cpu", *extra, entry=entry, cwd=tmp_path)
        text = out.stdout + out.stderr
        assert out.returncode == 2, (entry, text[-3000:])
        assert "Traceback" not in text
        assert sum(CASES[case] in line for line in text.splitlines()) == 1, (entry, text[-3000:])
    assert not marker.exists()
    created = {p for p in files_under(tmp_path) - before if "out" not in p.relative_to(tmp_path).parts[:1]}
    assert not created, created  # nothing but the tool's own log folder


def test_old_format_models_still_load(good_model, tmp_path):
    """A model written before format 2 (builder with a jsp target) loads: the string is compared, not imported."""
    from jsp.models.saved import load_model

    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((good_model / "model.safetensors").read_bytes())
    meta = json.loads((good_model / "model.json").read_text())
    meta.update(format="jsp-model/1", builder={"_target_": "jsp.models.UNet", **meta.pop("architecture")["args"]})
    meta["dataset"] = {"_target_": "jsp.data.make_synthetic", **meta["dataset"]["args"], "process": meta.pop("process")}
    (folder / "model.json").write_text(json.dumps(meta))
    old, _ = load_model(folder)
    new, _ = load_model(good_model)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(old(x), new(x))


def test_decompression_bomb_is_refused_with_our_message(tmp_path):
    from PIL import Image

    from jsp.data import io
    from jsp.errors import DatasetError

    path = tmp_path / "big.png"
    Image.new("L", (300, 300)).save(path)
    io.set_max_pixels(50_000)
    try:
        with pytest.raises(DatasetError, match=r"300x300 pixels, more than max_image_pixels=50,000"):
            io.read_image(path, "RGB")
        io.set_max_pixels(100_000)
        assert io.read_image(path, "RGB").shape == (300, 300, 3)
    finally:
        io.set_max_pixels(200_000_000)


def test_bomb_in_a_dataset_is_one_line_from_jsp_train(tmp_path, drive_root):
    out = run_cli(*TINY_TRAIN, "dataset=drive", f"dataset.root={drive_root}", "max_image_pixels=1000",
                  f"hydra.run.dir={tmp_path / 'run'}")
    text = out.stdout + out.stderr
    assert out.returncode == 2 and "more than max_image_pixels=1,000" in text and "Traceback" not in text, text
