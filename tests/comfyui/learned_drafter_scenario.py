"""The runner's learned_drafter scenario: record, train and sample with a learned drafter on tiny random models built
from ComfyUI's own classes (and the FREE DiT as a plain MODEL), through the pack's node classes and
comfy.sample.sample_custom, as a graph with SamplerCustom runs them.

Per family: FREE Record Trajectories samples a few seeds at CFG 2 (recording cond and uncond), FREE Train Tapped
Drafter trains a drafter on the files, FREE Drafter Loader loads it for the model, and FREE Sampler (strict, fixed
K 4) samples held-out seeds with frozen drafts and with the drafter. For every family of the current tree, strict
with a learned-architecture drafter is compared with core euler_ancestral by the energy two-sample test, and so is a
negative control that accepts every draft.
"""

from __future__ import annotations

import importlib
import time
import traceback

import torch

from tap_scenario import _free_dit  # this script's folder
from tiny_comfy_models import FAMILIES, tiny_comfy_model

STEPS = 12
RECORD_SEEDS = range(6)
HELD_OUT_SEEDS = (100, 101, 102)
CFG = 2.0


def run(runner) -> dict:
    import comfy.supported_models

    families = {"free_dit": lambda: _embedded_dit(runner)}
    for family, (config_name, *_) in FAMILIES.items():
        if hasattr(comfy.supported_models, config_name):
            families[family] = lambda spec=FAMILIES[family]: tiny_comfy_model(*spec)
    results, drafters, models = {}, {}, {}
    for family, build in families.items():
        try:
            models[family] = build()
            results[family], drafters[family] = _family(runner, family, *models[family])
        except Exception:  # the report carries it; the pytest side names the family
            results[family] = {"crashed": traceback.format_exc()}
    if "free_dit" in models:
        results["patched_model_messages"] = _patched_model_messages(runner, *models["free_dit"])
    if "flux" in drafters and "sd3" in models:
        results["mismatch_message"] = _mismatch_message(runner, drafters["flux"], *models["sd3"])
    for family, (config_name, *_) in FAMILIES.items():
        if hasattr(comfy.supported_models, config_name):
            try:
                results[f"law_{family}"] = _law(runner, *_law_setup(runner, family))
            except Exception:
                results[f"law_{family}"] = {"crashed": traceback.format_exc()}
    return results


def _embedded_dit(runner):
    """The embedded FREE DiT (trained weights: a random DiT's steps are too erratic to draft) as a plain MODEL, class 1
    against the null class; the random DiT-Micro/8 where the embedded weights are absent."""
    if not runner.embedded_present:
        return _free_dit(runner)
    pack = runner.pack_module.__name__
    loaders = importlib.import_module(pack + ".nodes.loaders")
    comfy_model = importlib.import_module(pack + ".nodes.comfy_model")
    (patcher,) = loaders.FREEDiTLoader().load("embedded")
    dit = comfy_model.free_dit_of(patcher)
    latent = torch.zeros(2, dit.in_channels, dit.input_size, dit.input_size)
    return patcher, comfy_model.class_conditioning(1, "one"), comfy_model.class_conditioning(dit.null_class, "null"), latent


def _nodes(runner):
    pack = runner.pack_module.__name__
    return (importlib.import_module(pack + ".nodes.recording"), importlib.import_module(pack + ".nodes.training"),
            importlib.import_module(pack + ".nodes.loaders"), importlib.import_module(pack + ".nodes.sampling"))


def _sigmas(patcher, steps: int) -> torch.Tensor:
    import comfy.samplers

    if hasattr(patcher, "get_model_object"):  # current ComfyUI: the (possibly patched) model_sampling object
        return comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "simple", steps).cpu()
    return comfy.samplers.calculate_sigmas_scheduler(patcher.model, "simple", steps).cpu()


def _sample(patcher, sampler, positive, negative, latent, seed: int, sigmas: torch.Tensor) -> torch.Tensor:
    import comfy.sample

    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    return comfy.sample.sample_custom(patcher, noise, CFG, sampler, sigmas, positive, negative, latent, seed=seed,
                                      disable_pbar=True)


def _family(runner, family: str, patcher, positive, negative, latent) -> tuple[dict, object]:
    recording, training, loaders, sampling = _nodes(runner)
    latent = latent.repeat(2, *([1] * (latent.dim() - 1)))  # batch 4
    sigmas = _sigmas(patcher, STEPS)
    (recorder,) = recording.FREERecordTrajectories().get_sampler(recordings=family, max_tokens=0)
    started = time.perf_counter()
    for seed in RECORD_SEEDS:
        _sample(patcher, recorder, positive, negative, latent, seed, sigmas)
    record_s = time.perf_counter() - started
    started = time.perf_counter()
    trained = training.FREETrainTappedDrafter().train(recordings=family, filename=f"{family}_drafter", train_steps=300,
                                                     batch_size=16, unroll=4, seed=0)
    train_s = time.perf_counter() - started
    (drafter,) = loaders.FREEDrafterLoader().load(patcher, f"{family}_drafter.safetensors")
    runs = {}
    for name, given in (("frozen", None), ("learned", drafter)):
        sampler, channel = sampling.FREESampler().get_sampler("strict", 4, "fixed", 0.0, drafter=given)
        proposed = accepted = calls = 0
        for seed in HELD_OUT_SEEDS:
            _sample(patcher, sampler, positive, negative, latent, seed, sigmas)
            stats = channel.latest
            proposed, accepted = proposed + sum(stats.proposed_per_step), accepted + sum(stats.accepted_per_step)
            calls += stats.sequential_dit_calls
        runs[name] = {"acceptance": accepted / max(proposed, 1), "calls": calls, "steps": STEPS * len(HELD_OUT_SEEDS)}
    sampler, channel = sampling.FREESampler().get_sampler("strict", 4, "adaptive", 0.0, drafter=drafter)  # the default
    _sample(patcher, sampler, positive, negative, latent, HELD_OUT_SEEDS[0], sigmas)
    runs["adaptive"] = {"draft_length": channel.latest.draft_length, "calls": channel.latest.sequential_dit_calls,
                        "steps": STEPS}
    final_layer = _final_layer(runner, patcher)
    return {"runs": runs, "record_s": record_s, "train_s": train_s, "ui_text": trained["ui"]["text"][0],
            "recordings": len(RECORD_SEEDS), "hooks_left": len(final_layer._forward_pre_hooks)}, drafter


def _final_layer(runner, patcher):
    tap = importlib.import_module(runner.pack_module.__name__ + ".nodes.tap")
    diffusion_model = patcher.model.diffusion_model
    return tap._attribute(diffusion_model, tap.tap_site(diffusion_model).final_layer)


def _mismatch_message(runner, drafter, patcher, positive, negative, latent) -> str | None:
    *_, sampling = _nodes(runner)
    sampler, _ = sampling.FREESampler().get_sampler("strict", 4, "fixed", 0.0, drafter=drafter)
    try:
        _sample(patcher, sampler, positive, negative, latent, 0, _sigmas(patcher, 4))
    except ValueError as error:
        return str(error)
    return None


def _patched_model_messages(runner, patcher, positive, negative, latent) -> dict:
    """FREE Sampler strict on the model with a caching-style patch: a model function wrapper, and (current tree) a
    DIFFUSION_MODEL wrapper; each must be refused before sampling, naming it."""
    *_, sampling = _nodes(runner)
    patched = {"function_wrapper": patcher.clone()}
    patched["function_wrapper"].set_model_unet_function_wrapper(lambda apply, args: apply(args["input"], args["timestep"], **args["c"]))
    if hasattr(patcher, "add_wrapper_with_key"):
        patched["diffusion_model_wrapper"] = patcher.clone()
        patched["diffusion_model_wrapper"].add_wrapper_with_key("diffusion_model", "test_cache", lambda executor, *a, **k: executor(*a, **k))
    messages = {}
    for name, model in patched.items():
        sampler, _ = sampling.FREESampler().get_sampler("strict", 4, "fixed", 0.0)
        try:
            _sample(model, sampler, positive, negative, latent, 0, _sigmas(model, 3))
            messages[name] = None
        except ValueError as error:
            messages[name] = str(error)
    return messages


def _law_setup(runner, family: str) -> tuple:
    """(drafter, model, conditionings, latent) for the law test of a family: the tiny model with a 4x4 latent (one frame
    of video), and a fresh drafter for it with its weights perturbed (seeded), so that its drafts are often rejected:
    strict's law does not depend on the drafter, and the always-accept control has power (a trained drafter's drafts
    are so close that 1500 samples did not tell always-accept from the plain law on the tiny Qwen-Image: p = 0.76)."""
    pack = runner.pack_module.__name__
    training = importlib.import_module(pack + ".free_core.training.train_tapped_drafter")
    folders = importlib.import_module(pack + ".nodes.model_folders")
    recording, *_ = _nodes(runner)
    config_name, unet, conds, shape = FAMILIES[family]
    shape = (*shape[:2], *([1] if len(shape) == 5 else []), 4, 4)
    patcher, positive, negative, latent = tiny_comfy_model(config_name, unet, conds, shape)
    name = f"{family}_law"
    (recorder,) = recording.FREERecordTrajectories().get_sampler(recordings=name, max_tokens=0)
    _sample(patcher, recorder, positive, negative, latent, 0, _sigmas(patcher, 4))  # sizes the drafter
    recorded, identity = training.load_recordings(folders.recordings_folder(name, must_exist=True))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        drafter = training.drafter_for_recordings(recorded, identity, training.TappedDrafterTrainConfig())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in drafter.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return drafter.eval(), patcher, positive, negative, latent


def _law(runner, drafter, patcher, positive, negative, latent) -> dict:
    """p-values of the energy test: strict with the learned drafter, and always-accept, against core euler_ancestral."""
    import comfy.samplers

    pack = runner.pack_module.__name__
    two_sample = importlib.import_module(pack + ".free_core.evaluation.two_sample")
    rounds = importlib.import_module(pack + ".free_core.engine.rounds")
    *_, sampling = _nodes(runner)
    n = 1500
    big = latent[:1].repeat(n, *([1] * (latent.dim() - 1)))
    sigmas = _sigmas(patcher, 8)
    core = _sample(patcher, comfy.samplers.sampler_object("euler_ancestral"), positive, negative, big, 1, sigmas)
    sampler, channel = sampling.FREESampler().get_sampler("strict", 4, "fixed", 0.0, drafter=drafter)
    strict = _sample(patcher, sampler, positive, negative, big, 2, sigmas)
    stats = channel.latest
    original = rounds.decide_drafts
    rounds.decide_drafts = lambda *args, **kwargs: (lambda accepted, kinds: (torch.ones_like(accepted), kinds))(
        *original(*args, **kwargs))
    try:
        wrong = _sample(patcher, sampler, positive, negative, big, 2, sigmas)
    finally:
        rounds.decide_drafts = original
    return {"strict_p": two_sample.energy_test(core, strict)[1], "always_accept_p": two_sample.energy_test(core, wrong)[1],
            "acceptance": stats.acceptance_rate, "calls": stats.sequential_dit_calls, "steps": 8, "samples": n}
