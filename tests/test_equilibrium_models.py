"""Equilibrium models: MCMC kernels, the Boltzmann oracle and energy models trained end to end."""

from __future__ import annotations

import math

import lightning
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from scipy import stats
from scipy.integrate import quad

from neqgen.commands.train import build_model
from neqgen.config import build_system, load_config, to_container
from neqgen.data.datamodule import EnsembleDataModule
from neqgen.data.dataset import save_ensemble
from neqgen.evaluation.baseline import gaussian_per_frame
from neqgen.evaluation.metrics import histogram, jensen_shannon_samples
from neqgen.models.equilibrium.energy import TimeConditionedEnergy
from neqgen.models.equilibrium.oracle import BoltzmannOracle
from neqgen.models.equilibrium.stationary import StationaryEnergy
from neqgen.models.samplers import langevin, mala, run_chains, uniform_in_domain
from neqgen.reference.boltzmann import boltzmann_density
from neqgen.reference.grid import Grid

from .conftest import CONFIG_DIR

SQUARE = [[-1.5, 1.5], [-1.5, 1.5]]


def gaussian_energy(mean: torch.Tensor, std: float):
    return lambda x: ((x - mean) ** 2).sum(-1) / (2 * std**2)


def expected_noise_js(a: np.ndarray, b: np.ndarray, domain, bins: int) -> float:
    """Return the JS divergence expected between histograms of two samples of one law.

    For small differences JS ~ sum (p - q)^2 / (8 m), whose mean over multinomial noise is
    (K - 1) (1 / n_a + 1 / n_b) / 8 with K the occupied bins.
    """
    occupied = np.count_nonzero(histogram(a, domain, bins) + histogram(b, domain, bins))
    return (occupied - 1) * (1 / len(a) + 1 / len(b)) / 8


def fit(model, path, max_epochs: int, frames_per_batch: int, particles_per_frame: int):
    """Train a model through a real Trainer on the ensemble file at path."""
    datamodule = EnsembleDataModule(
        path,
        frames_per_batch=frames_per_batch,
        particles_per_frame=particles_per_frame,
        repeats_per_epoch=4,
    )
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=datamodule)
    return trainer


def system_config(name: str) -> dict:
    return to_container(load_config([f"system={name}"], CONFIG_DIR).system)


# --- MCMC kernels -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["mala", "langevin"])
def test_sampler_reproduces_gaussian_moments(method):
    # h = 0.01 with s = 0.3 gives ULA a variance bias of h / (2 s^2) = 5.6%, below the
    # 5-standard-error tolerance of 5 sqrt(2 / 4000) = 11%.
    mean, std, n = torch.tensor([0.3, -0.2]), 0.3, 4000
    generator = torch.Generator().manual_seed(0)
    start = uniform_in_domain(n, SQUARE, generator)

    result = run_chains(method, gaussian_energy(mean, std), start, 0.01, 400, generator)

    samples = result.final.double()
    for axis in range(2):
        error = abs(float(samples[:, axis].mean()) - float(mean[axis]))
        assert error < 5 * std / math.sqrt(n), f"mean of axis {axis}"
        variance_error = abs(float(samples[:, axis].var()) - std**2)
        assert variance_error < 5 * std**2 * math.sqrt(2 / n), f"variance of axis {axis}"


def test_mala_corrects_langevin_bias():
    # On E = |x|^2 / (2 s^2), ULA with step h is an AR(1) process whose stationary variance
    # is s^2 / (1 - h / (2 s^2)): 4/3 for s = 1, h = 0.5. MALA's test removes the bias.
    n, step = 4000, 0.5
    tolerance = 5 * math.sqrt(2 / n) * 4 / 3
    energy = gaussian_energy(torch.zeros(2), 1.0)
    start = uniform_in_domain(n, [[-3, 3], [-3, 3]], torch.Generator().manual_seed(1))

    biased = langevin(energy, start, step, 100, torch.Generator().manual_seed(2)).final
    exact = mala(energy, start, step, 100, torch.Generator().manual_seed(3))

    assert abs(float(biased.double().var(0).mean()) - 4 / 3) < tolerance
    assert abs(float(exact.final.double().var(0).mean()) - 1.0) < tolerance
    assert 0.5 < exact.acceptance_rate < 1.0


def test_mala_double_well_populations():
    # E(x) = 2 (x^2 - 1)^2 + 0.5 x has a barrier of about 2 between wells of unequal depth;
    # the left well's exact weight is a ratio of two integrals.
    def energy_of(x):
        return 2 * (x**2 - 1) ** 2 + 0.5 * x

    left = quad(lambda x: math.exp(-energy_of(x)), -5, 0)[0]
    right = quad(lambda x: math.exp(-energy_of(x)), 0, 5)[0]
    exact = left / (left + right)
    n = 20_000
    generator = torch.Generator().manual_seed(0)
    start = uniform_in_domain(n, [[-2.0, 2.0]], generator)

    result = mala(lambda x: energy_of(x[:, 0]), start, 0.05, 1000, generator)

    population = float((result.final < 0).double().mean())
    assert abs(population - exact) < 5 * math.sqrt(exact * (1 - exact) / n)
    assert 0.6 < result.acceptance_rate < 1.0


@pytest.mark.parametrize("method", ["mala", "langevin"])
def test_confined_sampler_draws_half_normal(method):
    # exp(-x^2 / 2) restricted to [0, 3] is a half-normal (up to 0.3% of mass beyond 3),
    # whose mean is sqrt(2 / pi). ULA mirrors moves at the walls, MALA rejects them.
    n, domain = 4000, [[0.0, 3.0]]
    generator = torch.Generator().manual_seed(0)
    start = uniform_in_domain(n, domain, generator)

    result = run_chains(
        method, lambda x: x[:, 0] ** 2 / 2, start, 0.01, 600, generator, domain=domain
    )

    samples = result.final[:, 0].double()
    assert float(samples.min()) >= 0.0
    assert float(samples.max()) <= 3.0
    half_normal_std = math.sqrt(1 - 2 / math.pi)
    assert abs(float(samples.mean()) - math.sqrt(2 / math.pi)) < 5 * half_normal_std / math.sqrt(n)


def test_step_size_adaptation_hits_target():
    # From a step 100 times too small, 200 burn-in steps move h to the target; the kept
    # steps then accept at about that rate.
    generator = torch.Generator().manual_seed(0)
    start = uniform_in_domain(2000, SQUARE, generator)

    result = mala(
        gaussian_energy(torch.zeros(2), 0.1),
        start,
        1e-5,
        400,
        generator,
        burn_in=200,
        target_acceptance=0.6,
    )

    assert abs(result.acceptance_rate - 0.6) < 0.05
    assert float(result.step_size.median()) > 1e-3


def test_sampler_burn_in_and_thinning():
    energy = gaussian_energy(torch.zeros(2), 1.0)
    start = torch.zeros(5, 2)

    result = mala(energy, start, 0.1, 10, torch.Generator().manual_seed(0), burn_in=4, thinning=2)
    again = mala(energy, start, 0.1, 10, torch.Generator().manual_seed(0), burn_in=4, thinning=2)

    assert result.samples.shape == (3, 5, 2)
    assert torch.equal(result.samples, again.samples)
    assert result.acceptance.shape == (5,)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"method": "hmc"}, "sampler must be one of"),
        ({"step_size": 0.0}, "step size must be positive"),
        ({"n_steps": 10, "burn_in": 10}, r"burn-in must be in \[0, n_steps\)"),
        ({"thinning": 0}, "thinning must be a positive integer"),
        ({"target_acceptance": 0.6}, "needs a burn-in of at least 1"),
        ({"target_acceptance": 1.5, "burn_in": 2}, r"target acceptance must be in \(0, 1\)"),
        ({"domain": [[0.0, 1.0]]}, "must list 2 \\[low, high\\] pairs"),
    ],
)
def test_sampler_rejects_invalid_settings(settings, message):
    arguments = {"method": "mala", "step_size": 0.1, "n_steps": 10, **settings}
    method = arguments.pop("method")
    energy = gaussian_energy(torch.zeros(2), 1.0)

    with pytest.raises(ValueError, match=message):
        run_chains(method, energy, torch.zeros(3, 2), **arguments)


# --- Boltzmann oracle ---------------------------------------------------------------------


def chi_square(samples: np.ndarray, masses: np.ndarray, domain, bins: int):
    """Return Pearson's statistic of binned samples against exact bin masses, and the
    threshold that a correct sampler exceeds with probability 1e-4.

    Bins expecting fewer than 5 counts are pooled into one, as the test requires.
    """
    counts = np.histogramdd(samples, bins=bins, range=domain)[0].ravel()
    expected = masses.ravel() * len(samples)
    large = expected >= 5
    observed = np.append(counts[large], counts[~large].sum())
    expected = np.append(expected[large], expected[~large].sum())
    statistic = float(np.sum((observed - expected) ** 2 / np.maximum(expected, 1e-12)))
    return statistic, float(stats.chi2.ppf(1 - 1e-4, df=len(observed) - 1))


def test_oracle_samples_five_well_boltzmann_density():
    # The oracle and the reference share the 256 x 256 grid, so the masses of 8 x 8 blocks
    # are exact for the oracle's samples, at a time that is not a recorded frame.
    config = system_config("five_well")
    system = build_system(load_config(["system=five_well"], CONFIG_DIR).system)
    oracle = BoltzmannOracle(2, 20.0, system.domain, system_config=config, grid=256)
    grid = Grid(system.domain, 256)
    time = 3.7

    samples = oracle.sample(torch.tensor([time]), 50_000, torch.Generator().manual_seed(0))

    masses = grid.coarsen(boltzmann_density(system, grid, time) * grid.cell_volume, 8)
    statistic, threshold = chi_square(samples[0].numpy(), masses, system.domain, 32)
    assert samples.shape == (1, 50_000, 2)
    assert statistic < threshold


def test_oracle_follows_temperature_quench():
    # prinz_quench switches beta from 1 to 4 at t = 1; at t = 1.5 the samples must follow
    # the beta = 4 density and be far from the beta = 1 one.
    config = system_config("prinz_quench")
    system = build_system(load_config(["system=prinz_quench"], CONFIG_DIR).system)
    oracle = BoltzmannOracle(1, 2.0, system.domain, system_config=config, grid=240)
    grid = Grid(system.domain, 240)

    samples = oracle.sample(torch.tensor([1.5]), 20_000, torch.Generator().manual_seed(0))

    after = grid.coarsen(boltzmann_density(system, grid, 1.5) * grid.cell_volume, 6)
    before = grid.coarsen(boltzmann_density(system, grid, 0.5) * grid.cell_volume, 6)
    statistic_after, threshold_after = chi_square(samples[0].numpy(), after, system.domain, 40)
    statistic_before, threshold_before = chi_square(samples[0].numpy(), before, system.domain, 40)
    assert system.beta_at(1.5) == 4.0
    assert statistic_after < threshold_after
    assert statistic_before > threshold_before


def test_oracle_loads_from_lightning_checkpoint(tmp_path):
    # The train command saves an untrained model in Lightning's checkpoint layout.
    config = system_config("prinz")
    oracle = BoltzmannOracle(1, 1.0, [[-1.2, 1.2]], system_config=config, grid=128)
    path = tmp_path / "model.ckpt"
    torch.save(
        {
            "state_dict": oracle.state_dict(),
            "hyper_parameters": dict(oracle.hparams),
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )

    loaded = BoltzmannOracle.load_from_checkpoint(path, map_location="cpu")

    times = torch.tensor([0.25, 0.75])
    expected = oracle.sample(times, 100, torch.Generator().manual_seed(0))
    assert torch.equal(loaded.sample(times, 100, torch.Generator().manual_seed(0)), expected)
    assert loaded.hparams["grid"] == 128


def test_oracle_has_no_trainable_parameters():
    oracle = BoltzmannOracle(1, 1.0, [[-1.2, 1.2]], system_config=system_config("prinz"))

    assert BoltzmannOracle.trainable is False
    assert list(oracle.parameters()) == []
    assert oracle.configure_optimizers() is None


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"system_config": None}, "system_config must be the system's config"),
        ({"grid": 1}, "grid must be at least 2"),
        ({"grid": 5000, "dim": 2}, "more than"),
        ({"dim": 2}, "has dimension 1"),
    ],
)
def test_oracle_rejects_invalid_settings(settings, message):
    arguments = {
        "dim": 1,
        "horizon": 1.0,
        "domain": [[-1.2, 1.2]],
        "system_config": system_config("prinz"),
        **settings,
    }
    if arguments["dim"] == 2:
        arguments["domain"] = SQUARE

    with pytest.raises(ValueError, match=message):
        BoltzmannOracle(**arguments)


def test_oracle_loss_equals_entropy():
    # For the Prinz density, the mean negative log-likelihood of exact samples is its
    # differential entropy, which the grid gives as -sum m_i log(m_i / dx).
    config = system_config("prinz")
    system = build_system(load_config(["system=prinz"], CONFIG_DIR).system)
    oracle = BoltzmannOracle(1, 1.0, system.domain, system_config=config, grid=2400)
    grid = Grid(system.domain, 2400)
    density = boltzmann_density(system, grid, 0.0)
    entropy = -float(np.sum(density * np.log(density) * grid.cell_volume))

    samples = oracle.sample(torch.tensor([0.0]), 20_000, torch.Generator().manual_seed(0))
    loss = float(oracle.loss(samples, torch.tensor([0.0])))

    standard_error = float(system.potential(samples[0].double(), 0.0).std()) / math.sqrt(20_000)
    assert abs(loss - entropy) < 5 * standard_error


@pytest.mark.parametrize("experiment", ["default", "tiny", "paper"])
@pytest.mark.parametrize("name", ["oracle", "stationary_energy"])
def test_model_config_builds_model(name, experiment):
    # The train command's builder passes the system config to the oracle and drops size
    # keys that presets set for every model.
    cfg = load_config([f"model={name}", f"experiment={experiment}"], CONFIG_DIR)

    model = build_model(cfg, horizon=1.0, data_std=0.5)

    assert model.family == "equilibrium"
    assert model.sample(torch.tensor([0.5]), 3).shape == (1, 3, 2)


# --- Energy models trained end to end -----------------------------------------------------


@pytest.fixture
def prinz_boltzmann_ensemble(tmp_path):
    """Frames drawn independently from the static Prinz Boltzmann density, plus a test set."""
    config = system_config("prinz")
    oracle = BoltzmannOracle(1, 1.0, config["domain"], system_config=config, grid=480)
    times = torch.linspace(0, 1, 5)
    positions = oracle.sample(times, 2000, torch.Generator().manual_seed(1)).numpy()
    heldout = oracle.sample(times[:1], 20_000, torch.Generator().manual_seed(2))[0].numpy()
    path = tmp_path / "prinz.npz"
    save_ensemble(path, positions, times.numpy(), {"seed": 1})
    return path, positions, heldout, config["domain"]


@pytest.mark.parametrize(
    "objective, max_epochs, learning_rate",
    [("dsm", 25, 1e-2), pytest.param("cd", 80, 1e-3, marks=pytest.mark.slow)],
)
def test_stationary_energy_beats_gaussian_on_prinz(
    objective, max_epochs, learning_rate, prinz_boltzmann_ensemble
):
    path, positions, heldout, domain = prinz_boltzmann_ensemble
    pl.seed_everything(0, verbose=False)
    model = StationaryEnergy(1, 1.0, domain, learning_rate=learning_rate, objective=objective)

    fit(model, path, max_epochs, frames_per_batch=4, particles_per_frame=256)
    samples = model.sample(torch.tensor([0.5]), 5000, torch.Generator().manual_seed(3))

    baseline = gaussian_per_frame(positions[:1], 5000, np.random.default_rng(4))[0]
    model_js = jensen_shannon_samples(samples[0].numpy(), heldout, domain, 40)
    baseline_js = jensen_shannon_samples(baseline, heldout, domain, 40)
    assert model_js < baseline_js / 4, f"model {model_js:.4f}, baseline {baseline_js:.4f}"


def test_stationary_energy_checkpoint_round_trip(tmp_path, prinz_boltzmann_ensemble):
    path = prinz_boltzmann_ensemble[0]
    pl.seed_everything(0, verbose=False)
    model = StationaryEnergy(
        1, 1.0, [[-1.2, 1.2]], hidden=16, n_sampler_steps=20, sampler_burn_in=10
    )
    trainer = fit(model, path, max_epochs=1, frames_per_batch=4, particles_per_frame=64)
    trainer.save_checkpoint(tmp_path / "model.ckpt")

    loaded = StationaryEnergy.load_from_checkpoint(tmp_path / "model.ckpt")

    times = torch.tensor([0.0, 1.0])
    expected = model.sample(times, 20, torch.Generator().manual_seed(0))
    assert bool(loaded.base.fitted)
    assert torch.equal(loaded.sample(times, 20, torch.Generator().manual_seed(0)), expected)


def test_stationary_energy_ignores_time():
    model = StationaryEnergy(
        1, 2.0, [[-1.2, 1.2]], hidden=16, n_sampler_steps=20, sampler_burn_in=10
    )

    early = model.sample(torch.tensor([0.0]), 50, torch.Generator().manual_seed(0))
    late = model.sample(torch.tensor([2.0]), 50, torch.Generator().manual_seed(0))

    assert torch.equal(early, late)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"objective": "mle"}, "model.objective must be one of"),
        ({"sampler": "grid"}, "model.sampler must be one of"),
        ({"noise_scale": 0.0}, "model.noise_scale must be positive"),
        ({"reinit_probability": 1.5}, r"model.reinit_probability must be in \[0, 1\]"),
        ({"n_sampler_steps": 50, "sampler_burn_in": 50}, "model.sampler_burn_in must be in"),
    ],
)
def test_stationary_energy_rejects_invalid_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        StationaryEnergy(1, 1.0, [[-1.2, 1.2]], **settings)


@pytest.fixture(scope="module")
def two_mode_energy(tmp_path_factory):
    """A TimeConditionedEnergy trained by denoising score matching on two rotating modes.

    The modes (std 0.15) sit at (+-0.5, 0) and turn by a quarter turn over t in [0, 1].
    Returns the model, its training positions, an independent held-out ensemble and the
    frame times.
    """
    rng = np.random.default_rng(0)
    times = np.linspace(0, 1, 6)

    def draw(n):
        angle = np.pi / 2 * times[:, None]
        sign = rng.choice([-1.0, 1.0], size=(len(times), n))
        centers = 0.5 * sign[..., None] * np.stack((np.cos(angle), np.sin(angle)), -1)
        return centers + 0.15 * rng.normal(size=(len(times), n, 2))

    positions = draw(1000)
    path = tmp_path_factory.mktemp("two_modes") / "train.npz"
    save_ensemble(path, positions, times, {"seed": 0})
    pl.seed_everything(0, verbose=False)
    model = TimeConditionedEnergy(
        2,
        1.0,
        SQUARE,
        learning_rate=1e-2,
        hidden=64,
        n_layers=2,
        n_time_frequencies=4,
        objective="dsm",
        noise_scale=0.05,
    )
    fit(model, path, max_epochs=100, frames_per_batch=3, particles_per_frame=128)
    return model, positions, draw(4000), times


def test_energy_dsm_objective_beats_gaussian(two_mode_energy):
    model, positions, heldout, times = two_mode_energy

    samples = model.sample(torch.as_tensor(times), 4000, torch.Generator().manual_seed(1))

    baseline = gaussian_per_frame(positions, 4000, np.random.default_rng(2))
    for frame in range(len(times)):
        model_js = jensen_shannon_samples(samples[frame].numpy(), heldout[frame], SQUARE, 20)
        baseline_js = jensen_shannon_samples(baseline[frame], heldout[frame], SQUARE, 20)
        assert model_js < baseline_js / 3, f"frame {frame}: {model_js:.4f} vs {baseline_js:.4f}"
    assert not hasattr(model, "train_cells")


def test_energy_mala_matches_grid_sampler(two_mode_energy):
    # 3 times the JS expected from sampling noise alone leaves room for the bias of
    # 300-step chains: at t = 0.55 they reach about twice the noise level, 1000 steps
    # reach it. Five steps from uniform starts give a JS near 0.4.
    model = two_mode_energy[0]
    times = torch.tensor([0.0, 0.55])
    n = 8000

    cells = model.sample(times, n, torch.Generator().manual_seed(1))
    model.sampler = "mala"
    try:
        chains = model.sample(times, n, torch.Generator().manual_seed(0))
    finally:
        model.sampler = "grid"

    for frame in range(len(times)):
        a, b = chains[frame].numpy(), cells[frame].numpy()
        tolerance = 3 * expected_noise_js(a, b, SQUARE, 16)
        js = jensen_shannon_samples(a, b, SQUARE, 16)
        assert js < tolerance, f"t={float(times[frame])}: JS {js:.4f} >= {tolerance:.4f}"


@pytest.mark.parametrize("chain_start", ["uniform", "grid"])
def test_energy_mcmc_sampling_is_reproducible(chain_start):
    model = TimeConditionedEnergy(
        2,
        1.0,
        SQUARE,
        hidden=16,
        sampler="langevin",
        n_sampler_steps=20,
        sampler_burn_in=10,
        target_acceptance=0.9,
        chain_start=chain_start,
    )
    times = torch.tensor([0.0, 0.3, 1.0])

    first = model.sample(times, 50, torch.Generator().manual_seed(0))
    second = model.sample(times, 50, torch.Generator().manual_seed(0))

    assert first.shape == (3, 50, 2)
    assert torch.equal(first, second)
    assert float(first.abs().max()) <= 1.5


def test_energy_keeps_grid_defaults():
    model = TimeConditionedEnergy(2, 1.0, SQUARE)

    assert model.hparams["sampler"] == "grid"
    assert model.hparams["objective"] == "grid_mle"
    assert model.train_cells.shape == (48 * 48, 2)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"objective": "cd"}, "model.objective must be one of"),
        ({"sampler": "hmc"}, "model.sampler must be one of"),
        ({"chain_start": "data"}, "model.chain_start must be one of"),
        ({"sampler_step_size": -1.0}, "model.sampler_step_size must be positive"),
        ({"target_acceptance": 0.6, "sampler_burn_in": 0}, "model.target_acceptance adapts"),
    ],
)
def test_energy_rejects_invalid_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        TimeConditionedEnergy(2, 1.0, SQUARE, **settings)
