"""What the command line imports: the query verbs answer without torch, alembic or the search backends
(about 2.5 s of a 3-s `status` before the packages re-exported lazily)."""

import importlib
import subprocess
import sys
import textwrap

import pytest

from oialr_search._lazy import _type_checking_imports
from oialr_search.storage import COMPLETE, Store

HEAVY = ("torch", "alembic", "optuna", "propulate", "timm", "mpi4py")
LAZY_PACKAGES = ("oialr_search.search", "oialr_search.training", "oialr_search.lowrank")


def _study(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    store = Store(url)
    study = store.create_study(name="s", space={"raw": {}}, space_path="", metric="val_loss", direction="minimize",
                               backend="optuna", seed=0, budget=2)
    trial = store.start_trial(study, params={"optim.lr": 0.01}, rank=0, island=None, device="cpu",
                              config={"model": {"name": "mlp"}, "data": {"name": "digits"}, "optim": {"lr": 0.01}})
    store.finish_trial(trial.id, state=COMPLETE, value=0.5, values=[0.5])
    store.engine.dispose()
    return url


@pytest.mark.parametrize("verb", [["studies"], ["status", "--study", "s"], ["best", "--study", "s"],
                                  ["trials", "--study", "s"], ["pareto", "--study", "s"],
                                  ["export", "--study", "s", "-o", "{tmp}/best.yaml"]], ids=lambda verb: verb[0])
def test_query_verbs_import_no_torch_or_backends(tmp_path, verb):
    """Nor does exporting a run config: it is validated with the config classes alone."""
    url = _study(tmp_path)
    verb = [v.format(tmp=tmp_path) for v in verb]
    code = textwrap.dedent(f"""
        import sys
        from oialr_search.cli import main
        rc = main({verb!r} + ["--storage", {url!r}])
        print("rc", rc, "heavy", sorted(m for m in {HEAVY!r} if m in sys.modules))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "rc 0 heavy []", proc.stdout


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_every_public_name_resolves_from_its_module(package):
    pkg = importlib.import_module(package)
    declared = _type_checking_imports(pkg.__file__)
    assert sorted(declared) == sorted(pkg.__all__)
    for name, module in declared.items():
        assert getattr(pkg, name) is getattr(importlib.import_module(module, package), name)
        assert name in dir(pkg)
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        pkg.not_a_name  # noqa: B018
    assert "not_a_name" not in dir(pkg)


def test_the_trainer_imports_no_compiler_until_a_run_compiles():
    """Dynamo and inductor cost 1.5 s to import, which every search rank training a model without timm (whose
    torchvision imports dynamo itself) would pay with train.compile: none."""
    code = "import sys, oialr_search.training._trainer; print(sorted(m for m in sys.modules if m.startswith(" \
           "('torch._dynamo', 'torch._inductor'))))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
