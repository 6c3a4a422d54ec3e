"""Studies, trials and checkpoints of the release before train.precision trained in fp32: resuming them, or
training their exported configs, must not switch to the new default (auto: bf16 on CUDA) on a GPU."""

import json
import sqlite3

import yaml

from oialr_search.search import SearchRequest, SearchSpace, load_space, run_search
from oialr_search.storage import Store
from oialr_search.training import config_from_dict, config_to_dict, stored_run_config
from oialr_search.training._checkpoint import portable_config, resolved_config

from .test_search_cli import run, trials, write_space


def _without_precision(config: dict) -> dict:
    return {**config, "train": {k: v for k, v in config["train"].items() if k != "precision"}}


def test_a_config_of_the_earlier_release_keeps_fp32_and_a_current_one_is_untouched():
    current = config_to_dict(config_from_dict({"train": {"precision": "bf16"}}))
    assert stored_run_config(current) is current
    old = _without_precision(current)
    assert stored_run_config(old)["train"]["precision"] == "fp32" and "precision" not in old["train"]
    assert config_from_dict(old).train.precision == "auto"  # what the pin prevents
    # a checkpoint written by the earlier release resumes under the pinned config (no "different config")
    pinned = config_to_dict(config_from_dict(stored_run_config(old)))
    assert portable_config(resolved_config(old)) == portable_config(pinned)


def test_a_study_of_the_earlier_release_resumes_and_exports_in_fp32(tmp_path):
    write_space(tmp_path)
    url = f"sqlite:///{tmp_path}/oialr_search.db"
    assert run_search(SearchRequest(study="old", storage=url, space=load_space(tmp_path / "space.yaml"),
                                    backend="optuna", budget=1), quiet=True) == 0
    con = sqlite3.connect(tmp_path / "oialr_search.db")
    with con:  # as the earlier release stored them: no train.precision in the study's base or the trial's config
        (space,) = con.execute("SELECT space FROM oialr_studies").fetchone()
        space = json.loads(space)
        space["base"] = _without_precision(space["base"])
        con.execute("UPDATE oialr_studies SET space = ?", (json.dumps(space),))
        (config,) = con.execute("SELECT config FROM oialr_trial_payloads").fetchone()
        con.execute("UPDATE oialr_trial_payloads SET config = ?", (json.dumps(_without_precision(json.loads(config))),))
    con.close()
    store = Store(url)
    study = store.get_study("old")
    store.engine.dispose()
    assert SearchSpace.from_dict(study.space).trial_config({}, threads=1)["train"]["precision"] == "auto"
    proc = run(["export", "--study", "old", "--trial", "0", "-o", "tuned.yaml"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load((tmp_path / "tuned.yaml").read_text())["train"]["precision"] == "fp32"
    # new trials of the resumed study train in fp32 too, and it says so
    proc = run(["resume", "--study", "old", "--budget", "2"], tmp_path)
    assert proc.returncode == 0 and "its new trials do too" in proc.stdout, proc.stdout + proc.stderr
    configs = [json.loads(r["config"]) for r in trials(tmp_path, "old")]
    assert [c["train"].get("precision") for c in configs] == [None, "fp32"]
    proc = run(["resume", "--study", "old", "--budget", "3", "--set", "train.precision=auto"], tmp_path)
    assert proc.returncode == 0 and "its new trials do too" not in proc.stdout, proc.stdout + proc.stderr
    assert json.loads(trials(tmp_path, "old")[2]["config"])["train"]["precision"] == "auto"
