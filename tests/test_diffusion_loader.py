"""DiffusionPrior.from_pretrained / from_pipeline: what a diffusers checkpoint says is honoured
(checked against the diffusers scheduler's own ``step``) or refused with a ValueError naming it."""

import math
import types

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from posterior.priors.diffusion import DiffusionPrior  # noqa: E402

STEPS = 5
TOL = dict(rtol=1e-5, atol=1e-5)


def _unet(sample_size=8, out_channels=1, seed=0, **kwargs):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(sample_size=sample_size, in_channels=1, out_channels=out_channels,
                                 block_out_channels=(8, 8), layers_per_block=1, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2, norm_num_groups=8, **kwargs)


def _save(folder, unet, scheduler, pipeline_layout=True):
    unet.save_pretrained(folder / "unet" if pipeline_layout else folder)
    scheduler.save_pretrained(folder / "scheduler" if pipeline_layout else folder)
    return folder


def _reference(folder, scheduler_class="DDPMScheduler"):
    """A fresh scheduler loaded from the same folder, with set_timesteps(STEPS)."""
    scheduler = getattr(diffusers, scheduler_class).from_pretrained(folder / "scheduler", local_files_only=True)
    scheduler.set_timesteps(STEPS)
    return scheduler


def _check_ddpm_kernels(prior, scheduler, x, compare_final_variance):
    """Each step's mean and variance against ``DDPMScheduler.step``. step adds sqrt(var) * noise
    (for t > 0) with noise drawn from the generator it is given; redrawing that noise from a generator
    with the same seed and subtracting it recovers the mean exactly (a comparison without sampling
    error), and the variance is the scheduler's ``_get_variance(t)`` (what step scales the noise by
    the root of; for "fixed_small_log" it returns the std, which step uses as is).
    ``pred_original_sample`` checks x0_hat (prediction type, clipping, thresholding) on its own.
    The final step's variance differs by design under "fixed_small" (0 in DDPM, 1 - a_t here)."""
    assert torch.equal(prior.timesteps.cpu(), scheduler.timesteps)
    for k, t in enumerate(scheduler.timesteps):
        out = scheduler.step(prior.denoiser(x, t.expand(x.shape[0])).sample, t, x,
                             generator=torch.Generator().manual_seed(k))
        variance = float(scheduler._get_variance(t))
        if scheduler.config.variance_type == "fixed_small_log":  # _get_variance gives the std there
            variance = variance ** 2
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(k), dtype=x.dtype) if t > 0 else 0.0
        torch.testing.assert_close(prior.predict_x0(x, k), out.pred_original_sample, **TOL)
        torch.testing.assert_close(prior.step_mean(x, k), out.prev_sample - math.sqrt(variance) * noise, **TOL)
        if k < prior.num_steps - 1 or compare_final_variance:
            assert prior.step_var[k].item() == pytest.approx(variance, rel=1e-5, abs=1e-5)
        x = out.prev_sample


def _x(seed=1, shape=(2, 1, 8, 8)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("config", [
    dict(variance_type="fixed_small", timestep_spacing="leading", steps_offset=1),
    dict(variance_type="fixed_large", timestep_spacing="leading"),
    dict(variance_type="fixed_large", timestep_spacing="trailing", clip_sample=False),
    dict(variance_type="fixed_small_log", timestep_spacing="linspace"),
    dict(prediction_type="epsilon", clip_sample=False, timestep_spacing="trailing"),
    dict(prediction_type="v_prediction", clip_sample=True),
    dict(prediction_type="sample", clip_sample=True, clip_sample_range=0.5),
    dict(prediction_type="epsilon", thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5),
], ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_ddpm_folder_kernels_match_the_schedulers_step(tmp_path, config):
    """Timesteps are the scheduler's own (timestep_spacing, steps_offset); variance_type,
    prediction_type, clip_sample and thresholding are honoured, step by step."""
    folder = _save(tmp_path, _unet(), diffusers.DDPMScheduler(num_train_timesteps=1000, **config))
    prior = DiffusionPrior.from_pretrained(folder, STEPS).double()
    scheduler = _reference(folder)
    assert prior.variance_type == ("fixed_large" if config.get("variance_type") == "fixed_large" else "fixed_small")
    _check_ddpm_kernels(prior, scheduler, _x(), compare_final_variance=config.get("variance_type") == "fixed_large")


def test_flat_folder_and_explicit_timesteps(tmp_path):
    folder = _save(tmp_path, _unet(), diffusers.DDPMScheduler(timestep_spacing="trailing"), pipeline_layout=False)
    prior = DiffusionPrior.from_pretrained(folder, STEPS)
    assert prior.timesteps.tolist() == [999, 799, 599, 399, 199]
    custom = DiffusionPrior.from_pretrained(folder, 3, timesteps=torch.tensor([900, 500, 0]))
    assert custom.timesteps.tolist() == [900, 500, 0]
    with pytest.raises(ValueError, match="num_steps"):
        DiffusionPrior.from_pretrained(folder, 0)


def test_ddim_folder_is_the_ancestral_sampler_on_its_alphas(tmp_path):
    """A DDIMScheduler folder gives the same ancestral DDPM prior: its kernel is DDIMScheduler.step
    with eta=1 (given variance_noise, the mean is prev_sample - std * noise, std**2 =
    _get_variance(t, prev_t)); the eta=0 update is ddim_solve, not the prior's kernel."""
    folder = _save(tmp_path, _unet(), diffusers.DDIMScheduler(steps_offset=1, clip_sample=False))
    prior = DiffusionPrior.from_pretrained(folder, STEPS).double()
    scheduler = _reference(folder, "DDIMScheduler")
    assert torch.equal(prior.timesteps.cpu(), scheduler.timesteps)
    assert prior.timesteps.tolist() == [801, 601, 401, 201, 1]
    x = z = _x()
    stride = scheduler.config.num_train_timesteps // STEPS
    for k, t in enumerate(scheduler.timesteps):
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(k), dtype=x.dtype)
        out = scheduler.step(prior.denoiser(x, t.expand(x.shape[0])).sample, t, x, eta=1.0, variance_noise=noise)
        variance = float(scheduler._get_variance(t, t - stride))
        torch.testing.assert_close(prior.step_mean(x, k), out.prev_sample - math.sqrt(variance) * noise, **TOL)
        if k < STEPS - 1:  # the final step: 0 in DDIM (to a_p = 1), the forward noise 1 - a_t here
            assert prior.step_var[k].item() == pytest.approx(variance, rel=1e-5, abs=1e-5)
        x = out.prev_sample
    x = z
    for t in scheduler.timesteps:  # the DDIM scheduler's own (eta = 0) sampler is ddim_solve
        x = scheduler.step(prior.denoiser(x, t.expand(x.shape[0])).sample, t, x).prev_sample
    torch.testing.assert_close(prior.ddim_solve(z), x, **TOL)


def test_tuple_sample_size_gives_a_rectangular_event_shape(tmp_path):
    folder = _save(tmp_path, _unet(sample_size=(8, 16)), diffusers.DDPMScheduler(variance_type="fixed_large"))
    prior = DiffusionPrior.from_pretrained(folder, STEPS).double()
    assert prior.event_shape == (1, 8, 16)
    traj, log_probs = prior.sample(2, generator=torch.Generator().manual_seed(0), dtype=torch.float64,
                                   return_log_probs=True)
    assert traj.shape == (STEPS + 1, 2, 1, 8, 16)
    torch.testing.assert_close(prior.log_prob_steps(traj), log_probs)
    _check_ddpm_kernels(prior, _reference(folder), _x(shape=(2, 1, 8, 16)), compare_final_variance=True)


def test_from_pipeline_shares_the_checks_and_leaves_the_pipelines_scheduler_alone(tmp_path):
    pipeline = diffusers.DDPMPipeline(unet=_unet(), scheduler=diffusers.DDPMScheduler(variance_type="fixed_large"))
    before = pipeline.scheduler.timesteps.clone()
    prior = DiffusionPrior.from_pipeline(pipeline, STEPS)
    assert prior.denoiser is pipeline.unet and prior.scheduler is not pipeline.scheduler
    assert torch.equal(pipeline.scheduler.timesteps, before)
    reference = diffusers.DDPMScheduler.from_config(pipeline.scheduler.config)
    reference.set_timesteps(STEPS)
    _check_ddpm_kernels(prior.double(), reference, _x(), compare_final_variance=True)


def _conditional_unet(**kwargs):
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8),
                                          layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=8,
                                          cross_attention_dim=8, attention_head_dim=2, **kwargs)


HIDDEN = torch.randn(4, 8, generator=torch.Generator().manual_seed(5))
CONDITIONAL = {
    "class-conditional UNet2DModel": (lambda: _unet(num_class_embeds=10), {"class_labels": 3}),
    "UNet2DConditionModel": (_conditional_unet, {"encoder_hidden_states": HIDDEN}),
    "UNet2DConditionModel with classes": (lambda: _conditional_unet(num_class_embeds=4),
                                          {"encoder_hidden_states": HIDDEN[None], "class_labels": torch.tensor(2)}),
}


@pytest.mark.parametrize("case", list(CONDITIONAL))
def test_conditional_unets_are_the_prior_at_the_given_condition(tmp_path, case):
    """The prior of a conditional UNet at one condition: every step's mean and variance match
    DDPMScheduler.step on the UNet called with that condition; from_pipeline gives the same prior."""
    make, conditioning = CONDITIONAL[case]
    unet = make()
    folder = _save(tmp_path, unet, diffusers.DDPMScheduler(variance_type="fixed_large"))
    prior = DiffusionPrior.from_pretrained(folder, STEPS, conditioning=conditioning).double()
    scheduler = _reference(folder)
    unet = unet.double()
    x = _x()
    kwargs = {k: torch.as_tensor(v).double() if k == "encoder_hidden_states" else torch.as_tensor(v)
              for k, v in conditioning.items()}
    if "encoder_hidden_states" in kwargs:
        kwargs["encoder_hidden_states"] = kwargs["encoder_hidden_states"].reshape(1, 4, 8).expand(2, 4, 8)
    if "class_labels" in kwargs:
        kwargs["class_labels"] = kwargs["class_labels"].reshape(1).expand(2)
    for k, t in enumerate(scheduler.timesteps):
        out = scheduler.step(unet(x, t.expand(2), **kwargs).sample, t, x, generator=torch.Generator().manual_seed(k))
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(k), dtype=x.dtype) if t > 0 else 0.0
        variance = float(scheduler._get_variance(t))
        torch.testing.assert_close(prior.step_mean(x, k), out.prev_sample - math.sqrt(variance) * noise, **TOL)
        assert prior.step_var[k].item() == pytest.approx(variance, rel=1e-5, abs=1e-5)
        x = out.prev_sample
    pipeline = types.SimpleNamespace(unet=make(), scheduler=diffusers.DDPMScheduler(variance_type="fixed_large"))
    same = DiffusionPrior.from_pipeline(pipeline, STEPS, conditioning=conditioning).double()
    z = _x()
    torch.testing.assert_close(same.step_mean(z, 1), prior.step_mean(z, 1), **TOL)


@pytest.mark.parametrize("conditioning, match", [
    (None, r"conditioning=\{'class_labels'"),
    ({"class_labels": 10}, r"class_labels'\] must be in \[0, 10\)"),
    ({"class_labels": 1.5}, "one integer class"),
    ({"class_labels": 1, "encoder_hidden_states": HIDDEN}, "takes no such input"),
    ({"text": 1}, r"conditioning keys \['text'\]"),
])
def test_bad_conditioning_of_a_class_conditional_unet_is_refused(tmp_path, conditioning, match):
    folder = _save(tmp_path, _unet(num_class_embeds=10), diffusers.DDPMScheduler())
    with pytest.raises(ValueError, match=match):
        DiffusionPrior.from_pretrained(folder, STEPS, conditioning=conditioning)


def test_bad_encoder_hidden_states_are_refused(tmp_path):
    folder = _save(tmp_path, _conditional_unet(), diffusers.DDPMScheduler())
    with pytest.raises(ValueError, match=r"conditioning=\{'encoder_hidden_states'"):
        DiffusionPrior.from_pretrained(folder, STEPS)
    with pytest.raises(ValueError, match=r"shape \(L, 8\)"):
        DiffusionPrior.from_pretrained(folder, STEPS, conditioning={"encoder_hidden_states": torch.zeros(4, 6)})
    with pytest.raises(ValueError, match="NaN"):
        DiffusionPrior.from_pretrained(folder, STEPS, conditioning={"encoder_hidden_states": torch.full((4, 8), float("nan"))})


REFUSED = {
    "EulerDiscreteScheduler": lambda: (_unet(), diffusers.EulerDiscreteScheduler()),
    "learned_range": lambda: (_unet(out_channels=2), diffusers.DDPMScheduler(variance_type="learned_range")),
    "fixed_large_log": lambda: (_unet(), diffusers.DDPMScheduler(variance_type="fixed_large_log")),
    "out_channels=2": lambda: (_unet(out_channels=2), diffusers.DDPMScheduler()),
    "addition_embed_type": lambda: (_conditional_unet(addition_embed_type="text"), diffusers.DDPMScheduler()),
}


@pytest.mark.parametrize("setting", list(REFUSED))
def test_unsupported_checkpoints_are_refused_naming_the_setting(tmp_path, setting):
    unet, scheduler = REFUSED[setting]()
    folder = _save(tmp_path, unet, scheduler)
    with pytest.raises(ValueError, match=setting):
        DiffusionPrior.from_pretrained(folder, STEPS)
    with pytest.raises(ValueError, match=setting):
        DiffusionPrior.from_pipeline(types.SimpleNamespace(unet=unet, scheduler=scheduler), STEPS)
