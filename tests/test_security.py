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
    elif case == "export size within ranges":
        meta["input_size"] = [60000, 60000]  # each side allowed, 3.6 G pixels are not
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
    "export size within ranges": "input_size: [60000, 60000] is more than 16,777,216 pixels",
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
    """A copy of the good model with one hostile change; returns (folder, marker path)."""
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
    from jsp.errors import JSPError
    from jsp.models.saved import load_model
    for folder, bound in zip(sys.argv[1::2], sys.argv[2::2]):
        before = set(sys.modules)
        try:
            load_model(folder, max_params=int(bound))
            result = "LOADED"
        except JSPError as e:
            result = "REFUSED " + str(e).replace(chr(10), " ")
        print(result)
        print("NEW", " ".join(sorted(set(sys.modules) - before)))
""")


def bound_for(case: str) -> str:
    return "2000000" if case == "weights too large" else "2000000000"


@pytest.fixture(scope="module")
def hostile_models(good_model, tmp_path_factory) -> dict:
    """case -> (folder, marker a hostile call would create)."""
    return {case: hostile(good_model, tmp_path_factory.mktemp("hostile"), case) for case in CASES}


def test_load_model_refuses_every_hostile_model_and_imports_nothing_new(good_model, hostile_models):
    """One fresh interpreter loads the good model (what it imports is the allowlist), then each hostile one."""
    args = [str(good_model), "2000000000"]
    for case, (folder, _) in hostile_models.items():
        args += [str(folder), bound_for(case)]
    out = subprocess.run([sys.executable, "-c", LOADER, *args], capture_output=True, text=True)
    lines = out.stdout.splitlines()
    assert len(lines) == 2 * (len(CASES) + 1), out.stdout + out.stderr
    assert lines[0] == "LOADED"
    allowed = set(lines[1].split()[1:])
    seen = set()
    for i, case in enumerate(hostile_models, start=1):
        result, modules = lines[2 * i], set(lines[2 * i + 1].split()[1:])
        assert result.startswith("REFUSED") and CASES[case] in result, (case, result)
        seen |= modules
    assert seen <= allowed, sorted(seen - allowed)  # nothing a good model would not import
    assert not any(marker.exists() for _, marker in hostile_models.values())


def composed(name: str, *overrides: str):
    from hydra import compose, initialize_config_dir

    from jsp.cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


@pytest.mark.parametrize("case", list(CASES))
def test_eval_and_export_refuse_every_hostile_model_with_one_line_and_exit_2(case, hostile_models, tmp_path, caplog):
    from jsp.cli import _guarded
    from jsp.saved_runs import evaluate_saved, export_saved

    folder, marker = hostile_models[case]
    before = files_under(folder.parent)
    common = [f"checkpoint={folder}", f"max_model_params={bound_for(case)}"]
    jobs = {"eval": (evaluate_saved, composed("eval", *common, "device=cpu"), tmp_path / "eval"),
            "export": (export_saved, composed("export", *common, f"out={tmp_path / 'export'}"))}
    for entry, (fn, *args) in jobs.items():
        caplog.clear()
        with pytest.raises(SystemExit) as stop:
            _guarded(fn, *args)
        assert stop.value.code == 2, entry
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and CASES[case] in errors[0] and "\n" not in errors[0], (entry, errors)
    assert not marker.exists() and files_under(folder.parent) == before
    assert not any(tmp_path.iterdir())  # neither tool wrote anything


@pytest.mark.parametrize("case", ["old-format builder with a nested target", "dataset target"])
def test_hostile_model_from_the_command_line(case, hostile_models, tmp_path):
    """The same as a user meets it: jsp-eval and jsp-export in a fresh process, one line, exit 2."""
    folder, marker = hostile_models[case]
    for entry, extra in (("eval", "device=cpu"), ("export", f"out={tmp_path / 'exp'}")):
        out = run_cli(f"checkpoint={folder}", f"hydra.run.dir={tmp_path / 'out'}", extra, entry=entry, cwd=tmp_path)
        text = out.stdout + out.stderr
        assert out.returncode == 2 and "Traceback" not in text, (entry, text[-3000:])
        assert sum(CASES[case] in line for line in text.splitlines()) == 1, (entry, text[-3000:])
    assert not marker.exists() and not (tmp_path / "exp").exists()


def files_under(root: Path) -> set:
    return {p for p in root.rglob("*")}


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


def test_importing_jsp_opens_no_connection():
    """albumentations checks PyPI for updates on import unless told not to; jsp tells it."""
    script = textwrap.dedent("""
        import os, socket
        os.environ.pop("NO_ALBUMENTATIONS_UPDATE", None)
        tried = []
        def refuse(self, address, *a):
            tried.append(address)
            raise OSError("no network in this test")
        socket.socket.connect = refuse
        socket.create_connection = lambda address, *a, **k: refuse(None, address)
        import jsp.data, jsp.pipeline, jsp.saved_runs  # everything a run imports
        print("TRIED", tried)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert "TRIED []" in out.stdout, out.stdout + out.stderr
