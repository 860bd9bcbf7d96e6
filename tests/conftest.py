import os
import sys
from pathlib import Path

import pytest

# the tests' shared helpers (inventory, cli_process) import by name from every test folder
sys.path.insert(0, str(Path(__file__).parent))

# Tests never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"  # forced, not defaulted: a developer's HF_HUB_OFFLINE=0 must not reach a hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def clean_registries():
    """Each test gets the reward and method registries as collection left them (rewards that test modules register
    at import included): what a test registers is gone after it, so no test sees another's rewards or methods."""
    from rewardtune.engine.methods import base as methods
    from rewardtune.registry import registry

    reg = registry()
    saved = {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
             for k, v in vars(reg).items()}
    builders = dict(methods._BUILDERS)
    # a spec's `imports:` file runs once per process (registry.import_extra marks it in sys.modules); one that a test
    # ran is forgotten with the rewards it registered, so the next spec importing it registers them again
    user_files = {k for k in sys.modules if k.startswith("rewardtune_user_")}
    yield
    vars(reg).clear()
    vars(reg).update(saved)
    methods._BUILDERS.clear()
    methods._BUILDERS.update(builders)
    for k in [k for k in sys.modules if k.startswith("rewardtune_user_") and k not in user_files]:
        del sys.modules[k]


@pytest.fixture(scope="session")
def trained_demo(tmp_path_factory):
    """The demo spec as shipped (DRaFT-1, LoRA, the shapes world) trained 40 steps on this machine, its eval the 32
    shapes-eval captions with one image each: (run directory, TrainResult). One run (56 s) serves the default
    suite's fast learning test and `rewardtune eval`'s tests, which trained their own (62 s and 35 s). Under
    pytest-xdist (`nox -s tests`) the workers share it: the first to need it trains under a file lock, and the
    others read its result (JSON beside the run) instead of training again."""
    import dataclasses
    import json

    from filelock import FileLock

    import rewardtune
    from rewardtune.engine.trainer import TrainResult

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's temp folder, above each worker's own
    out, saved = root / "trained-demo" / "run", root / "trained-demo" / "result.json"
    saved.parent.mkdir(exist_ok=True)
    with FileLock(str(root / "trained-demo.lock")):
        if saved.exists():
            d = json.loads(saved.read_text())
            return out, TrainResult(**{**d, "output_dir": Path(d["output_dir"]),
                                       "weights_path": d["weights_path"] and Path(d["weights_path"])})
        res = rewardtune.run(Path(__file__).resolve().parents[1] / "specs" / "demo.yaml",
                             overrides=["method={name: draft_k, k: 1}", "train.steps=40",
                                        "logging.eval_images_per_prompt=1"], output_dir=out, progress=False,
                             overwrite=True)  # over what a worker that failed left
        saved.write_text(json.dumps(dataclasses.asdict(res), default=str))
    return out, res
