"""The wheel is a working tool: `pip install .` ships the configs inside the package."""
import shutil
import subprocess
import sys
import textwrap
import zipfile

from tests.conftest import REPO

COMPOSE = textwrap.dedent("""
    import jsp, jsp.cli
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(config_dir=jsp.cli.CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["method=l1_norm", "experiment=drive_unet"])
    print(jsp.__file__)
    print(jsp.cli.CONF_DIR)
    print(cfg.model._target_, cfg.schedule.importance, cfg.dataset._target_)
""")


def test_wheel_ships_the_configs_and_composes_from_an_installed_copy(tmp_path):
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    source.mkdir()
    for part in ("pyproject.toml", "README.md", "jsp", "conf"):
        (shutil.copytree if (REPO / part).is_dir() else shutil.copy)(
            REPO / part, source / part, **({"ignore": shutil.ignore_patterns("__pycache__")} if part == "jsp" else {}))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("jsp-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    conf = {n for n in names if n.startswith("jsp/conf/")}
    assert {"jsp/conf/train.yaml", "jsp/conf/eval.yaml", "jsp/conf/model/unet.yaml",
            "jsp/conf/hydra/help/jsp.yaml", "jsp/conf/method/l1_norm.yaml"} <= conf
    assert len(conf) == len(list((REPO / "conf").rglob("*.yaml")))
    site = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                          str(wheel)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    away = tmp_path / "elsewhere"
    away.mkdir()
    out = subprocess.run([sys.executable, "-c", COMPOSE], capture_output=True, text=True, cwd=away,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    module, conf_dir, picked = out.stdout.splitlines()
    assert module.startswith(str(site)) and conf_dir == str(site / "jsp" / "conf")
    assert picked == "jsp.models.UNet l1_norm jsp.data.load_drive"
