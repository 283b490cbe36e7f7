"""Bad input through the real CLI: every case exits with status 2 and exactly one `cirlab: error:` line on stderr,
prints no traceback, runs nothing planted in a data file, and leaves the files that were there byte-identical
(the whole tree of the case is hashed before and after, so a failed command also may not leave new files)."""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cirlab.cli.main import main
from cirlab.datasets.css import CSS_FILE
from cirlab.datasets.css_synth import CSSSynthConfig, generate_css
from cirlab.utils.safe_pickle import load_pickled_npy

TINY = ["--embed-dim", "16", "--text-dim", "16", "--image-option", "width=4", "--text-option", "word_dim=8",
        "--text-option", "hidden_dim=16", "--image-size", "16", "--batch-size", "4", "--iters", "2",
        "--checkpoint-every", "0"]
MARKER = "PWNED"  # what a planted pickle payload would create in the case folder


class SystemPayload:
    """Unpickling this runs `touch <marker>` through os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (f"touch {self.marker}",)


class OpenPayload:
    """Unpickling this creates <marker> through builtins.open."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return builtins.open, (str(self.marker), "w")


def tree(root: Path) -> dict[str, str]:
    """Every path under root -> sha256 of its bytes ("dir" for folders)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@dataclass
class Env:
    """What a case may use: its own folder, a copy of the tiny CSS set's .npy, a trained run to copy."""

    tmp: Path
    css_npy: Path
    run: Path

    def css(self, name: str = "css", data: dict | None = None) -> Path:
        """A CSS data root holding the tiny set's .npy (images absent: the loader renders 2D scenes)."""
        root = self.tmp / name
        root.mkdir(parents=True, exist_ok=True)
        if data is None:
            shutil.copy(self.css_npy, root / CSS_FILE)
        else:
            np.save(root / CSS_FILE, np.array(data, dtype=object), allow_pickle=True)
        return root

    def css_data(self) -> dict:
        return load_pickled_npy(self.css_npy)

    def planted(self, payload: type = SystemPayload) -> Path:
        data = self.css_data()
        data["extra"] = payload(self.tmp / MARKER)
        return self.css("planted", data)

    def run_copy(self, edit: Callable[[dict], None] | None = None, data_root: Path | None = None) -> Path:
        run = self.tmp / "run"
        shutil.copytree(self.run, run)
        config = json.loads((run / "config.json").read_text())
        config["train"]["data_root"] = str(data_root or self.css())
        if edit:
            edit(config["train"])
        (run / "config.json").write_text(json.dumps(config))
        return run

    def file(self, name: str = "a_file", data: bytes = b"user data\n") -> Path:
        path = self.tmp / name
        path.write_bytes(data)
        return path


def broken_css(**split_changes: Any) -> Callable[[Env], list[str]]:
    def setup(env: Env) -> list[str]:
        data = env.css_data()
        data["train"].update(split_changes)
        return ["data", "stats", "--dataset", "css", "--data-root", str(env.css(data=data))]
    return setup


def wrong_type(key: str, value: Any, model: bool = False) -> Callable[[Env], list[str]]:
    def edit(train: dict) -> None:
        (train["model"] if model else train)[key] = value
    return lambda env: ["eval", str(env.run_copy(edit)), "--json"]


def new_run(env: Env, *extra: str, out: Path | None = None) -> list[str]:
    return ["train", "--data-root", str(env.css()), "--out", str(out or env.tmp / "newrun"), "--no-eval", *TINY,
            *extra]


def image_weights_png(env: Env) -> list[str]:
    png = env.tmp / "weights.png"
    Image.new("RGB", (4, 4)).save(png)
    tiny = [a for a in TINY if a != "width=4"]
    tiny.remove("--image-option")  # resnet18 takes no width
    return ["train", "--data-root", str(env.css()), "--out", str(env.tmp / "newrun"), "--no-eval", *tiny,
            "--image-encoder", "resnet18", "--image-weights", str(png)]


def efficientnet_weights_png(env: Env) -> list[str]:
    args = image_weights_png(env)
    args[args.index("resnet18")] = "efficientnet_lite0"
    return args


def demo_over_user_files(env: Env) -> list[str]:
    (env.tmp / "demo").mkdir()
    (env.tmp / "demo" / "report.md").write_text("my own report\n")
    return ["demo", "--out", str(env.tmp / "demo"), "--iters", "1"]


def submit_over_existing(env: Env) -> list[str]:
    (env.tmp / "sub").mkdir()
    (env.tmp / "sub" / "recall_submission.json").write_text("{}")
    return ["submit-cirr", str(env.tmp / "norun"), "--out", str(env.tmp / "sub")]


def existing_generated_set(env: Env) -> list[str]:
    generate_css(env.tmp / "set", CSSSynthConfig(seed=3, train_images=14, test_images=7), progress=False)
    return ["data", "css", "--out", str(env.tmp / "set"), "--train-images", "7", "--test-images", "7", "--seed", "3"]


def css_images_without_npy(env: Env) -> list[str]:
    (env.tmp / "set" / "images").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(env.tmp / "set" / "images" / "css_train_000000.png")
    return ["data", "css", "--out", str(env.tmp / "set"), "--train-images", "7", "--test-images", "7"]


def resume_without_checkpoint(env: Env) -> list[str]:
    run = env.run_copy()
    shutil.rmtree(run / "checkpoint")
    return ["train", "--out", str(run), "--resume"]


def bad_checkpoint_state(env: Env) -> list[str]:
    run = env.run_copy()
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    state["iteration"] = "2"
    (run / "checkpoint" / "state.json").write_text(json.dumps(state))
    return ["train", "--out", str(run), "--resume"]


def bad_metrics(env: Env) -> list[str]:
    run = env.run_copy()
    (run / "metrics.json").write_text(json.dumps({"iterations": "2", "interrupted": False, "train_seconds": 1}))
    return ["eval", str(run), "--json"]


def index_out(out: Callable[[Env], Path]) -> Callable[[Env], list[str]]:
    def setup(env: Env) -> list[str]:
        (env.tmp / "pictures").mkdir()
        Image.new("RGB", (8, 8), "red").save(env.tmp / "pictures" / "a.png")
        return ["index", str(env.run_copy()), "--images", str(env.tmp / "pictures"), "--out", str(out(env)),
                "--json"]
    return setup


def truncated_css(env: Env) -> list[str]:
    root = env.css()
    (root / CSS_FILE).write_bytes(env.css_npy.read_bytes()[:300])
    return ["data", "stats", "--dataset", "css", "--data-root", str(root)]


def truncated_config(env: Env) -> list[str]:
    run = env.run_copy()
    (run / "config.json").write_text('{"train": {')
    return ["eval", str(run)]


def user_folder_kept(env: Env) -> list[str]:
    (env.tmp / "mine").mkdir()
    (env.tmp / "mine" / "notes.txt").write_text("keep me\n")
    return new_run(env, "--batch-size", "100000000", out=env.tmp / "mine")


CASES: dict[str, tuple[Callable[[Env], list[str]], str]] = {
    # 1. pickle payloads never run: data stats, data css (the .npy in its --out), eval, train
    "stats_pickle_os_system": (lambda env: ["data", "stats", "--dataset", "css", "--data-root", str(env.planted())],
                               "it asks to call posix.system"),
    "stats_pickle_builtins_open": (lambda env: ["data", "stats", "--dataset", "css", "--data-root",
                                                str(env.planted(OpenPayload))], "it asks to call io.open"),
    "css_out_pickle": (lambda env: ["data", "css", "--out", str(env.planted()), "--train-images", "7",
                                    "--test-images", "7"], "refusing to load"),
    "eval_pickle": (lambda env: ["eval", str(env.run_copy(data_root=env.planted())), "--json"], "refusing to load"),
    "train_pickle": (lambda env: ["train", "--data-root", str(env.planted()), "--out", str(env.tmp / "newrun"),
                                  *TINY], "refusing to load"),
    # 2. nothing overwritten without --force
    "css_over_other_set": (existing_generated_set, "holds a generated set with other settings (train_images 14 -> 7)"),
    "css_over_foreign_images": (css_images_without_npy, "holds CSS images but"),
    "train_over_run": (lambda env: new_run(env, out=env.run_copy()), "already holds a run; use --resume"),
    "train_over_run_files": (lambda env: new_run(env, out=env.file("model.safetensors").parent),
                             "holds files of an earlier run (model.safetensors)"),
    "demo_over_user_files": (demo_over_user_files, "already holds report.md, not made by `cirlab demo`"),
    "submit_over_existing": (submit_over_existing, "already exist; pass --force"),
    # 3. OS errors are one line naming the path
    "css_out_under_file": (lambda env: ["data", "css", "--out", str(env.file() / "out")], "Not a directory"),
    "css_out_in_sys": (lambda env: ["data", "css", "--out", "/sys/cirlab-test-out"], "(/sys/cirlab-test-out)"),
    "train_out_under_file": (lambda env: new_run(env, out=env.file() / "run"), "Not a directory"),
    "train_out_in_proc": (lambda env: new_run(env, out=Path("/proc/cirlab-test/run")), "(/proc/cirlab-test"),
    "index_out_under_file": (index_out(lambda env: env.file() / "index"), "Not a directory"),
    "index_out_in_sys": (index_out(lambda env: Path("/sys/cirlab-test-index")), "(/sys/"),
    # 3. files are checked: CSS .npy, config.json, checkpoint, metrics, weights
    "css_objects_img_int": (broken_css(objects_img=5), "train.objects_img must be a list of scenes, not int"),
    "css_mod_index_out_of_range": (broken_css(mods=[{"from": [0], "to": [10**6], "to_str": "x"}]),
                                   "train mod 0 'to' holds an image index outside"),
    "css_pos_wrong": (broken_css(objects_img=[[{"color": "red", "shape": "circle", "pos": "top"}]], mods=[]),
                      "train.objects_img[0][0].pos must be two numbers"),
    "css_truncated": (truncated_css, "truncated"),
    "config_embed_dim_str": (wrong_type("embed_dim", "512", model=True),
                             "train.model.embed_dim must be an integer, not a string ('512')"),
    "config_model_int": (wrong_type("model", 5), "train.model must be a JSON object, not an integer (5)"),
    "config_dataset_options_list": (wrong_type("dataset_options", ["x"]), "train.dataset_options must be a JSON"),
    "config_unknown_field": (wrong_type("colour", "red"), "train has unknown fields: ['colour']"),
    "config_embed_dim_negative": (wrong_type("embed_dim", -5, model=True), "train.model.embed_dim must be at least 1"),
    "config_eval_batch_size_zero": (wrong_type("eval_batch_size", 0), "eval_batch_size must be positive, not 0"),
    "config_image_size_negative": (wrong_type("image_size", -3), "image_size must not be negative, not -3"),
    "config_eval_split_unknown": (wrong_type("eval_split", "validation"), "eval_split 'validation': css has splits"),
    "config_truncated": (truncated_config, "malformed run config"),
    "checkpoint_iteration_str": (bad_checkpoint_state, "'iteration' must be a non-negative integer"),
    "metrics_iterations_str": (bad_metrics, "'iterations' must be int"),
    "image_weights_png": (image_weights_png, "cannot read image encoder weights"),
    "efficientnet_weights_png": (efficientnet_weights_png, "cannot read image encoder weights"),
    # 3. batch size bounded by the data; a failed start removes only what it created
    "batch_size_huge": (lambda env: new_run(env, "--batch-size", "100000000"), "--batch-size 100000000 is larger"),
    "failed_run_keeps_user_folder": (user_folder_kept, "is larger than the"),
    "resume_without_checkpoint": (resume_without_checkpoint, "no checkpoint in"),
    # errors tested elsewhere, cheap in-process
    "unknown_model": (lambda env: new_run(env, "--model", "nosuchmodel"), "unknown model 'nosuchmodel'"),
    "unknown_dataset": (lambda env: ["train", "--dataset", "nosuchset"], "unknown dataset 'nosuchset'"),
    "missing_data_root": (lambda env: ["train", "--data-root", str(env.tmp / "nowhere"), "--iters", "1"],
                          "nowhere does not exist"),
    "iters_zero": (lambda env: ["train", "--iters", "0"], "--iters must be positive"),
    "eval_missing_run": (lambda env: ["eval", str(env.tmp / "norun")], "run directory not found"),
}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, tiny_css: Path) -> Path:
    root = tmp_path_factory.mktemp("trained")
    shutil.copy(tiny_css / CSS_FILE, root / CSS_FILE)
    run = root / "run"
    assert main(["train", "--data-root", str(root), "--out", str(run), *TINY]) == 0
    return run


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_error_line_and_changes_nothing(name: str, tmp_path: Path, tiny_css: Path,
                                                         trained_run: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    setup, needle = CASES[name]
    case = tmp_path / "case"
    case.mkdir()
    monkeypatch.chdir(case)  # anything written to a relative default path lands in the hashed tree
    argv = setup(Env(case, tiny_css / CSS_FILE, trained_run))
    before = tree(case)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("cirlab: error: "), err
    assert "Traceback" not in err
    assert needle in lines[0], lines[0]
    assert not (case / MARKER).exists()
    assert tree(case) == before


def test_failed_start_removes_the_parent_folders_it_made(tmp_path: Path, tiny_css: Path,
                                                         trained_run: Path) -> None:
    env = Env(tmp_path, tiny_css / CSS_FILE, trained_run)
    args = new_run(env, "--batch-size", "100000000", out=tmp_path / "a" / "b" / "run")
    before = tree(tmp_path)
    assert main(args) == 2
    assert not (tmp_path / "a").exists() and tree(tmp_path) == before


# --force, and what is not an error -----------------------------------------------------------------------------
def test_data_css_same_settings_is_a_no_op_and_force_replaces(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "set"
    small = ["--train-images", "7", "--test-images", "7", "--seed", "3"]
    assert main(["data", "css", "--out", str(out), "--train-images", "14", "--test-images", "7", "--seed", "3"]) == 0
    assert len(list((out / "images").glob("css_train_*.png"))) == 14
    before = tree(out)
    assert main(["data", "css", "--out", str(out), "--train-images", "14", "--test-images", "7", "--seed", "3"]) == 0
    assert "already present with these settings, nothing rewritten" in capsys.readouterr().out
    assert tree(out) == before
    assert main(["data", "css", "--out", str(out), *small]) == 2
    assert tree(out) == before
    assert main(["data", "css", "--out", str(out), *small, "--force"]) == 0
    assert len(list((out / "images").glob("css_train_*.png"))) == 7
    assert load_pickled_npy(out / CSS_FILE)["generator_config"]["train_images"] == 7


def test_force_over_a_planted_file_runs_nothing(tmp_path: Path, tiny_css: Path, trained_run: Path) -> None:
    env = Env(tmp_path, tiny_css / CSS_FILE, trained_run)
    out = env.planted()
    assert main(["data", "css", "--out", str(out), "--train-images", "7", "--test-images", "7", "--force"]) == 0
    assert not (tmp_path / MARKER).exists()
    assert "extra" not in load_pickled_npy(out / CSS_FILE)


# crash leftovers -------------------------------------------------------------------------------------------------
def test_resume_cleans_stale_temporaries(tmp_path: Path, tiny_css: Path, trained_run: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    run = Env(tmp_path, tiny_css / CSS_FILE, trained_run).run_copy()
    stale = run / ".checkpoint.k3j2h1"  # a crash while writing a checkpoint: tensors written, state.json not yet
    stale.mkdir()
    (stale / "state.safetensors").write_bytes(b"partial")
    assert main(["train", "--out", str(run), "--resume", "--no-eval"]) == 0, capsys.readouterr().err
    assert not stale.exists() and (run / "checkpoint" / "state.json").is_file()


def test_resume_falls_back_to_the_old_checkpoint_after_a_crash_mid_swap(tmp_path: Path, tiny_css: Path,
                                                                        trained_run: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    run = Env(tmp_path, tiny_css / CSS_FILE, trained_run).run_copy()
    # replace_dir_atomic renames checkpoint -> .checkpoint.old, then the new temporary -> checkpoint: a crash
    # between the two leaves the old one parked and the new one under its temporary name
    os.replace(run / "checkpoint", run / ".checkpoint.old")
    shutil.copytree(run / ".checkpoint.old", run / ".checkpoint.x7f9q2")
    assert main(["train", "--out", str(run), "--resume", "--no-eval"]) == 0, capsys.readouterr().err
    assert f"resuming {run}" in capsys.readouterr().out
    assert json.loads((run / "checkpoint" / "state.json").read_text())["iteration"] == 2
    assert sorted(p.name for p in run.glob(".checkpoint*")) == []
    assert json.loads((run / "metrics.json").read_text())["iterations"] == 2


def test_recover_checkpoint_states(tmp_path: Path) -> None:
    from cirlab.training.checkpoint import checkpoint_dir, has_checkpoint, recover_checkpoint

    def whole(path: Path) -> Path:
        path.mkdir(parents=True)
        (path / "state.safetensors").write_bytes(b"t")
        (path / "state.json").write_text("{}")
        return path

    run = tmp_path / "run"
    whole(run / ".checkpoint.old")
    (run / ".checkpoint.abc").mkdir()
    assert has_checkpoint(run) and checkpoint_dir(run) == run / ".checkpoint.old"
    assert not (run / "checkpoint").exists()  # reading moves nothing (every DDP rank reads)
    recover_checkpoint(run)
    assert checkpoint_dir(run) == run / "checkpoint" and sorted(p.name for p in run.iterdir()) == ["checkpoint"]
    (run / ".checkpoint.old").mkdir()  # a half-deleted old copy beside a whole checkpoint: stale
    recover_checkpoint(run)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint"]
    empty = tmp_path / "empty"
    (empty / ".checkpoint.zzz").mkdir(parents=True)  # the first checkpoint crashed while being written
    assert not has_checkpoint(empty)
    recover_checkpoint(empty)
    assert list(empty.iterdir()) == []


# eval of an unfinished run -------------------------------------------------------------------------------------
@pytest.mark.parametrize("state, notice", [
    ("finished", None),
    ("interrupted", "from iteration 1 of 2 (the run was interrupted; continue it with `cirlab train --out"),
    ("killed", "from iteration 2 of 2 (the run has not finished: no metrics.json)"),
])
def test_eval_names_the_weights_of_an_unfinished_run(state: str, notice: str | None, tmp_path: Path,
                                                     tiny_css: Path, trained_run: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    run = Env(tmp_path, tiny_css / CSS_FILE, trained_run).run_copy()
    if state == "interrupted":
        metrics = json.loads((run / "metrics.json").read_text())
        (run / "metrics.json").write_text(json.dumps({**metrics, "iterations": 1, "interrupted": True}))
    elif state == "killed":
        (run / "metrics.json").unlink()
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    err = capsys.readouterr().err
    if notice is None:
        assert "note:" not in err
    else:
        (line,) = [x for x in err.splitlines() if x.startswith("cirlab: note:")]
        assert f"evaluating {run / 'model.safetensors'} {notice}" in line


def test_check_fields_reads_types_and_bounds_from_the_dataclass() -> None:
    from dataclasses import dataclass as dc
    from dataclasses import field

    from cirlab.utils.errors import CirlabError
    from cirlab.utils.fields import check_fields

    @dc
    class Example:
        size: int = field(default=4, metadata={"min": 1})
        rate: float = 0.1
        names: list[str] = field(default_factory=list)
        scale: float | None = None

    assert check_fields(Example, {"size": 2, "rate": 1, "names": ["a"], "scale": None}, "x") == {
        "size": 2, "rate": 1.0, "names": ["a"], "scale": None}
    for data, needle in [({"size": 0}, "x.size must be at least 1, not 0"),
                         ({"size": True}, "x.size must be an integer, not true or false (True)"),
                         ({"names": ["a", 3]}, "x.names[1] must be a string, not an integer (3)"),
                         ({"scale": "big"}, "x.scale must be a number or null, not a string ('big')"),
                         ([], "x must be a JSON object, not a list ([])")]:
        with pytest.raises(CirlabError) as info:
            check_fields(Example, data, "x")
        assert str(info.value) == needle
