"""Trajectory models: the window datamodule, samplers on known cases, training and paths."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from neqgen.data.datamodule import EnsembleDataModule
from neqgen.data.dataset import save_ensemble
from neqgen.data.paths import PathDataModule
from neqgen.evaluation.baseline import gaussian_per_frame
from neqgen.evaluation.metrics import jensen_shannon_samples
from neqgen.models.nonequilibrium.bridge import FrameBridge
from neqgen.models.nonequilibrium.neural_sde import NeuralSDE, energy_score
from neqgen.simulation import frame_times, initial_positions, simulate
from neqgen.systems import Harmonic, RotatingWells

WELLS_DOMAIN = [[-1.5, 1.5], [-1.5, 1.5]]
# The noise setting of each model, for tests that build one without a system config.
NOISE_SETTINGS = {FrameBridge: {"bridge_noise": 0.5}, NeuralSDE: {"diffusion": 0.5}}


def trainer(max_epochs: int) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
    )


def assert_gaussian(samples: torch.Tensor, mean: float, variance: float, label: str):
    """Check the sample mean and variance of 1D samples to 5 standard errors."""
    n = samples.numel()
    values = samples.double().reshape(-1)
    mean_error = abs(float(values.mean()) - mean)
    variance_error = abs(float(values.var()) - variance)
    assert mean_error < 5 * math.sqrt(variance / n), f"mean {label}"
    assert variance_error < 5 * variance * math.sqrt(2 / n), f"variance {label}"


# --- PathDataModule ---------------------------------------------------------------------


@pytest.fixture
def labelled_ensemble(tmp_path):
    """positions[f, p] = (p, f): each position names its particle and frame."""
    n_frames, n_particles = 7, 50
    frames, particles = np.meshgrid(np.arange(n_frames), np.arange(n_particles), indexing="ij")
    positions = np.stack((particles, frames), axis=-1).astype(np.float32)
    path = tmp_path / "labelled.npz"
    save_ensemble(path, positions, np.linspace(0.0, 0.6, n_frames), {"seed": 0})
    return path


def test_windows_follow_same_particles(labelled_ensemble):
    datamodule = PathDataModule(
        labelled_ensemble, windows_per_batch=4, particles_per_window=8, window=3, seed=2
    )
    datamodule.setup()

    x, t = next(iter(datamodule.train_dataloader()))

    assert x.shape == (4, 4, 8, 2)
    assert t.shape == (4, 4)
    particle, frame = x[..., 0], x[..., 1]
    assert torch.equal(particle, particle[:, :1].expand_as(particle)), "particle changes"
    steps = frame[:, 1:] - frame[:, :-1]
    assert torch.equal(steps, torch.ones_like(steps)), "frames not consecutive"
    expected_times = 0.1 * frame[:, :, 0]
    torch.testing.assert_close(t, expected_times, atol=1e-6, rtol=0)


def test_window_split_matches_frames_datamodule(labelled_ensemble):
    paths = PathDataModule(labelled_ensemble, val_fraction=0.2, seed=5)
    frames = EnsembleDataModule(labelled_ensemble, val_fraction=0.2, seed=5)
    paths.setup()
    frames.setup()

    # The first coordinate of a position is its particle index.
    assert torch.equal(paths.train_set.positions[0, :, 0], frames.train_set.positions[0, :, 0])
    assert torch.equal(paths.val_set.positions[0, :, 0], frames.val_set.positions[0, :, 0])
    torch.testing.assert_close(
        paths.initial_positions()[:, 0], frames.train_set.positions[0, :, 0]
    )


def test_window_sizes_default_to_frames_config(labelled_ensemble):
    # conf/data sizes: a batch contains as many positions as a batch of whole frames.
    datamodule = PathDataModule(
        labelled_ensemble, window=3, frames_per_batch=16, particles_per_frame=32
    )

    assert datamodule.windows_per_batch == 4
    assert datamodule.particles_per_window == 32


def test_validation_windows_are_fixed(labelled_ensemble):
    datamodule = PathDataModule(labelled_ensemble, windows_per_batch=3, particles_per_window=4)
    datamodule.setup()

    first = [x for x, _ in datamodule.val_dataloader()]
    second = [x for x, _ in datamodule.val_dataloader()]

    assert len(first) == 2  # 6 start frames for window=1, 3 per batch
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_window_longer_than_ensemble_is_rejected(labelled_ensemble):
    datamodule = PathDataModule(labelled_ensemble, window=7)

    with pytest.raises(ValueError, match="window=7 needs at least 8 frames"):
        datamodule.prepare()


def test_trajectory_model_rejects_frame_batches():
    model = FrameBridge(dim=2, horizon=1.0, domain=WELLS_DOMAIN, bridge_noise=0.5)

    with pytest.raises(ValueError, match="PathDataModule"):
        model.loss(torch.zeros(4, 16, 2), torch.zeros(4))


def test_sampling_without_initial_bank_names_fix():
    model = NeuralSDE(dim=1, horizon=1.0, domain=[[-3.0, 3.0]], diffusion=1.0)

    with pytest.raises(ValueError, match="set_initial_bank"):
        model.sample(torch.tensor([0.5]), 10)


def test_null_noise_without_system_names_setting():
    with pytest.raises(ValueError, match="model.bridge_noise is null"):
        FrameBridge(dim=2, horizon=1.0, domain=WELLS_DOMAIN)


def test_null_noise_comes_from_system_config():
    system_config = {"name": "harmonic", "_target_": "neqgen.systems.Harmonic", "beta": 4.0}

    model = NeuralSDE(dim=1, horizon=1.0, domain=[[-3.0, 3.0]], system_config=system_config)

    torch.testing.assert_close(model.diffusion, torch.tensor([math.sqrt(2 / 4.0)]))


# --- samplers with the exact drift -------------------------------------------------------


def test_neural_sde_sampler_with_exact_drift(monkeypatch):
    # dX = -k (X - v t) dt + sigma dW from x0: the mean follows
    # v t - v / k + (x0 + v / k) e^{-kt} and the variance is sigma^2 (1 - e^{-2kt}) / (2k).
    # Euler-Maruyama with dt = 2e-3 changes the variance by about k dt / 2 = 0.1%, far
    # below the 5-standard-error tolerance of 5%.
    k, velocity, sigma, x0 = 2.0, 0.5, 0.8, 1.0
    model = NeuralSDE(
        dim=1, horizon=3.0, domain=[[-3.0, 3.0]], diffusion=sigma, learn_diffusion=False, dt=2e-3
    )
    model.set_initial_bank(torch.full((1, 1), x0))
    monkeypatch.setattr(model, "drift", lambda x, t: -k * (x - velocity * t[:, None]))
    times = torch.tensor([0.0, 0.4, 1.0, 3.0])

    samples = model.sample(times, 20_000, torch.Generator().manual_seed(0))

    assert samples.shape == (4, 20_000, 1)
    for index, t in enumerate(times.tolist()[1:], start=1):
        mean = velocity * t - velocity / k + (x0 + velocity / k) * math.exp(-k * t)
        variance = sigma**2 * (1 - math.exp(-2 * k * t)) / (2 * k)
        assert_gaussian(samples[index], mean, variance, f"t={t}")
    assert torch.all(samples[0] == x0)


def exact_ornstein_uhlenbeck_endpoint(k: float, beta: float, noise: float, spacing: float):
    """Return the exact E[x_{k+1} | z_s, x_k] for data dX = -k X dt + sqrt(2 / beta) dW.

    Given x_k, the next frame is x_{k+1} ~ N(phi x_k, v) with phi = e^{-k spacing} and
    v = (1 - phi^2) / (beta k). The bridge observes z_s - (1 - s) x_k = s x_{k+1} plus
    N(0, noise^2 s (1 - s) spacing), so the posterior mean is
    phi x_k + v (z - (1 - s) x_k - s phi x_k) / (s v + noise^2 (1 - s) spacing).
    """
    phi = math.exp(-k * spacing)
    variance = (1 - phi**2) / (beta * k)

    def endpoint(z, fraction, start, t):
        s = fraction[:, None]
        prior = phi * start
        gain = variance / (s * variance + noise**2 * (1 - s) * spacing)
        return prior + gain * (z - (1 - s) * start - s * prior)

    return endpoint


def test_bridge_sampler_with_exact_endpoint(monkeypatch):
    # The data are dX = -k X dt + sqrt(2 / beta) dW from x0, recorded every 0.1. At frame
    # times the chained bridges must give the Ornstein-Uhlenbeck marginals. Half-way through
    # a frame interval the law is that of the interpolant, Gaussian with mean
    # (m_k + m_{k+1}) / 2 and variance (V_k + V_{k+1} + 2 phi V_k) / 4 + sigma^2 spacing / 4.
    k, beta, noise, x0, spacing = 1.0, 1.0, 1.0, 1.0, 0.1
    model = FrameBridge(
        dim=1, horizon=1.0, domain=[[-3.0, 3.0]], bridge_noise=noise, dt=1e-3, data_scale=1.0
    )
    model.set_frame_times(torch.linspace(0.0, 1.0, 11))
    model.set_initial_bank(torch.full((1, 1), x0))
    monkeypatch.setattr(
        model, "predict_endpoint", exact_ornstein_uhlenbeck_endpoint(k, beta, noise, spacing)
    )

    def mean(t):
        return x0 * math.exp(-k * t)

    def variance(t):
        return (1 - math.exp(-2 * k * t)) / (beta * k)

    times = torch.tensor([0.1, 0.35, 0.5, 1.0], dtype=torch.float64)
    samples = model.sample(times, 20_000, torch.Generator().manual_seed(1))

    for index in (0, 2, 3):
        t = float(times[index])
        assert_gaussian(samples[index], mean(t), variance(t), f"frame t={t}")
    phi = math.exp(-k * spacing)
    between = (
        variance(0.3) + variance(0.4) + 2 * phi * variance(0.3)
    ) / 4 + noise**2 * spacing / 4
    assert_gaussian(samples[1], (mean(0.3) + mean(0.4)) / 2, between, "t=0.35")


def test_energy_score_is_smallest_at_true_law():
    # For observations from N(0, 1), the energy score of a sampler N(mu, s^2) is smallest at
    # mu = 0, s = 1. Common random numbers make the paired differences precise, so each
    # wrong candidate must lose by more than 5 standard errors of the mean difference.
    generator = torch.Generator().manual_seed(0)
    observed = torch.randn(100_000, 1, generator=generator)
    noise = torch.randn(2, 100_000, 1, generator=generator)
    best = energy_score(noise, observed)

    for mu, s in ((0.2, 1.0), (0.0, 0.8), (0.0, 1.25)):
        difference = (energy_score(mu + s * noise, observed) - best).double()
        error = float(difference.std()) / math.sqrt(len(difference))
        assert float(difference.mean()) > 5 * error, f"mu={mu}, s={s}"


# --- the neural SDE recovers an Ornstein-Uhlenbeck process -------------------------------


def crps_standard_errors(
    k: float, beta: float, spacing: float, dt: float, mean_square: float, n: int
) -> tuple[float, float, float, float]:
    """Return the chain-consistent (a*, G*) and the standard errors of their estimates.

    The Euler-Maruyama chain of m = spacing / dt steps with drift -a x and noise G has the
    transition N(rho^m x, G^2 dt (1 - rho^{2m}) / (1 - rho^2)) with rho = 1 - a dt. It
    equals the Ornstein-Uhlenbeck transition N(phi x, s^2), phi = e^{-k spacing},
    s^2 = (1 - phi^2) / (beta k), at a* = (1 - phi^{1/m}) / dt and the matching G*.

    In one dimension the energy score is the CRPS. For a Gaussian transition its minimiser
    has independent errors with the sandwich variances Var(phi) = pi s^2 / (3 E[x^2] n)
    (curvature E[x^2] / (s sqrt(pi)), gradient variance E[x^2] / 3) and
    Var(s) = 4 pi V s^2 / n with V = 4 (1 / (2 pi sqrt(3)) - 1 / (4 pi)) (curvature
    1 / (2 s sqrt(pi)), gradient variance V), 24% above the likelihood's s^2 / (2 n). The
    delta method carries them to (a, G).
    """
    steps = round(spacing / dt)
    phi = math.exp(-k * spacing)
    s = math.sqrt((1 - phi**2) / (beta * k))

    def chain_parameters(phi_value, s_value):
        rho = phi_value ** (1 / steps)
        gain = (1 - rho ** (2 * steps)) / (1 - rho**2)
        return (1 - rho) / dt, s_value / math.sqrt(dt * gain)

    a_star, g_star = chain_parameters(phi, s)
    variance_phi = math.pi * s**2 / (3 * mean_square * n)
    gradient_variance = 4 * (1 / (2 * math.pi * math.sqrt(3)) - 1 / (4 * math.pi))
    variance_s = 4 * math.pi * gradient_variance * s**2 / n
    step = 1e-6
    da_dphi = (chain_parameters(phi + step, s)[0] - a_star) / step
    dg_dphi = (chain_parameters(phi + step, s)[1] - g_star) / step
    dg_ds = (chain_parameters(phi, s + step)[1] - g_star) / step
    error_a = abs(da_dphi) * math.sqrt(variance_phi)
    error_g = math.sqrt(dg_dphi**2 * variance_phi + dg_ds**2 * variance_s)
    return a_star, g_star, error_a, error_g


@pytest.mark.parametrize("dt", [0.02, 0.1])
def test_neural_sde_recovers_ornstein_uhlenbeck(tmp_path, dt):
    # dX = -k X dt + sqrt(2 / beta) dW from its stationary law, recorded every 0.1. The
    # learned drift is summarised by its least-squares slope a over the data. The targets
    # are the chain-consistent a*, G*: with dt = 0.1 (one step per frame) G* = 1.346 is
    # 19 standard errors below sqrt(2) = 1.414, so the test checks the stated bias too.
    k, beta, n_particles, horizon = 1.0, 1.0, 2000, 5.0
    system = Harmonic(k=k, dim=1, beta=beta)
    times = frame_times(horizon, 51)
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(n_particles, 1, generator=generator, dtype=torch.float64)
    positions = simulate(system, start / math.sqrt(beta * k), times, 1e-3, 0, progress=False)
    save_ensemble(tmp_path / "ou.npz", positions.numpy(), times.numpy(), {"seed": 0})

    pl.seed_everything(0, verbose=False)
    datamodule = PathDataModule(
        tmp_path / "ou.npz", windows_per_batch=8, particles_per_window=256, repeats_per_epoch=4
    )
    model = NeuralSDE(
        dim=1,
        horizon=horizon,
        domain=[[-3.0, 3.0]],
        learning_rate=5e-3,
        hidden=32,
        n_layers=2,
        n_time_frequencies=2,
        n_space_frequencies=0,
        diffusion=1.0,
        learn_diffusion=True,
        dt=dt,
        transitions_per_step=1024,
        data_scale=1.0,
    )
    trainer(20).fit(model, datamodule=datamodule)

    train, _ = datamodule.split()
    x = positions[:-1, train].reshape(-1, 1).float()
    t = times[:-1].float().repeat_interleave(len(train))
    with torch.no_grad():
        slope = -float((model.drift(x, t) * x).sum() / (x * x).sum())
    noise = float(model.diffusion[0].detach())
    a_star, g_star, error_a, error_g = crps_standard_errors(
        k, beta, 0.1, dt, float((x**2).mean()), x.numel()
    )
    assert abs(slope - a_star) < 5 * error_a, (
        f"slope {slope:.4f}, a* {a_star:.4f} +- {error_a:.4f}"
    )
    assert abs(noise - g_star) < 5 * error_g, (
        f"noise {noise:.4f}, G* {g_star:.4f} +- {error_g:.4f}"
    )


# --- training on the rotating five wells -------------------------------------------------

WELLS_HORIZON = 2.0
WELLS_NOISE = math.sqrt(2 / 5.0)  # sqrt(2 / beta) of the five wells


@pytest.fixture(scope="module")
def five_wells(tmp_path_factory):
    """Training file, training positions and independent positions of the five wells.

    1500 particles start uniformly on [-1, 1]^2 and are recorded every 0.1 up to t = 2: the
    transient from the uniform start into the rotating wells, which no Gaussian describes.
    """
    system = RotatingWells()
    times = frame_times(WELLS_HORIZON, 21)
    ensembles = []
    for seed in (0, 1):
        generator = torch.Generator().manual_seed(seed)
        start = initial_positions(
            system, {"kind": "uniform", "low": -1, "high": 1}, 1500, generator
        )
        ensembles.append(simulate(system, start, times, dt=2e-3, seed=seed, progress=False))
    path = tmp_path_factory.mktemp("wells") / "train.npz"
    save_ensemble(path, ensembles[0].numpy(), times.numpy(), {"seed": 0})
    return path, ensembles[0].numpy(), ensembles[1].numpy()


def fit_on_wells(model, path) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    datamodule = PathDataModule(
        path, windows_per_batch=8, particles_per_window=128, repeats_per_epoch=8
    )
    fit = trainer(40)
    fit.fit(model, datamodule=datamodule)
    return fit


@pytest.fixture(scope="module")
def trained_bridge(five_wells):
    path, train, _ = five_wells
    model = FrameBridge(
        dim=2,
        horizon=WELLS_HORIZON,
        domain=WELLS_DOMAIN,
        hidden=64,
        n_space_frequencies=32,
        bridge_noise=WELLS_NOISE,
        data_scale=float(train.std()),
    )
    return model, fit_on_wells(model, path)


@pytest.fixture(scope="module")
def trained_neural_sde(five_wells):
    path, train, _ = five_wells
    model = NeuralSDE(
        dim=2,
        horizon=WELLS_HORIZON,
        domain=WELLS_DOMAIN,
        learning_rate=4e-3,
        hidden=32,
        diffusion=WELLS_NOISE,
        learn_diffusion=False,
        transitions_per_step=128,
        data_scale=float(train.std()),
    )
    return model, fit_on_wells(model, path)


def scores_against_heldout(samples: np.ndarray, train, heldout, frames) -> dict[str, float]:
    """Return the mean histogram Jensen-Shannon divergence over frames of three samplers."""
    baseline = gaussian_per_frame(train[frames], samples.shape[1], np.random.default_rng(0))
    scores = {"model": [], "baseline": [], "floor": []}
    for index, frame in enumerate(frames):
        reference = heldout[frame]
        scores["model"].append(jensen_shannon_samples(samples[index], reference, WELLS_DOMAIN, 20))
        scores["baseline"].append(
            jensen_shannon_samples(baseline[index], reference, WELLS_DOMAIN, 20)
        )
        scores["floor"].append(jensen_shannon_samples(train[frame], reference, WELLS_DOMAIN, 20))
    return {name: float(np.mean(values)) for name, values in scores.items()}


@pytest.mark.parametrize("fixture", ["trained_bridge", "trained_neural_sde"])
def test_trajectory_model_beats_gaussian_baseline(fixture, five_wells, request):
    # The margin: the model closes at least half the gap between the Gaussian-per-frame
    # baseline and the floor of two independent ensembles of the same size.
    model, _ = request.getfixturevalue(fixture)
    _, train, heldout = five_wells
    frames = [5, 10, 20]
    times = torch.from_numpy(frame_times(WELLS_HORIZON, 21).numpy()[frames])

    samples = model.sample(times, 1500, torch.Generator().manual_seed(2)).numpy()

    scores = scores_against_heldout(samples, train, heldout, frames)
    gap = scores["baseline"] - scores["floor"]
    assert scores["model"] < scores["baseline"] - 0.5 * gap, str(scores)


@pytest.mark.parametrize("fixture", ["trained_bridge", "trained_neural_sde"])
def test_sampled_paths_move_like_particles(fixture, five_wells, request):
    # Over one frame (0.1) a particle of the data moves 0.15 (RMS), less than its free
    # noise sqrt(2 D 0.1) = 0.2 because the wells confine it. Two unrelated particles are
    # 0.74 apart, so paths assembled from independent samples would fail by a factor 5.
    # The band of a factor 1.5 checks continuity, not the exact step law: measured ratios
    # are 0.9-1.0 for the bridge and 1.05-1.32 for the neural SDE, whose learned wells are
    # too soft (see NeuralSDE).
    model, _ = request.getfixturevalue(fixture)
    _, train, _ = five_wells
    frames = [10, 11, 19, 20]
    times = torch.from_numpy(frame_times(WELLS_HORIZON, 21).numpy()[frames])

    paths = model.sample_paths(times, 1500, torch.Generator().manual_seed(3)).numpy()

    def rms(a, b):
        return float(np.sqrt(((a - b) ** 2).sum(-1).mean()))

    for first, second in ((0, 1), (2, 3)):
        expected = rms(train[frames[first]], train[frames[second]])
        unrelated = rms(train[frames[first]], np.roll(train[frames[second]], 1, axis=0))
        step = rms(paths[first], paths[second])
        assert unrelated > 3 * expected, "the check cannot tell paths from shuffled samples"
        assert expected / 1.5 < step < 1.5 * expected, f"RMS step {step:.3f}, data {expected:.3f}"


@pytest.mark.parametrize("fixture", ["trained_bridge", "trained_neural_sde"])
def test_sampled_paths_are_reproducible(fixture, request):
    model, _ = request.getfixturevalue(fixture)
    times = torch.tensor([0.0, 0.25, 1.0])

    first = model.sample_paths(times, 200, torch.Generator().manual_seed(4))
    second = model.sample_paths(times, 200, torch.Generator().manual_seed(4))
    other = model.sample_paths(times, 200, torch.Generator().manual_seed(5))

    assert torch.equal(first, second)
    assert not torch.equal(first[1:], other[1:])


@pytest.mark.parametrize(
    ("fixture", "model_class"),
    [("trained_bridge", FrameBridge), ("trained_neural_sde", NeuralSDE)],
)
def test_checkpoint_keeps_initial_bank(fixture, model_class, request, tmp_path):
    model, fit = request.getfixturevalue(fixture)
    path = tmp_path / "model.ckpt"
    fit.save_checkpoint(path)

    loaded = model_class.load_from_checkpoint(path)

    assert torch.equal(loaded.initial_bank, model.initial_bank)
    assert int(loaded.initial_bank_count) == 1350  # the training particles of frame 0
    times = torch.tensor([0.0, 0.55])
    expected = model.sample(times, 50, torch.Generator().manual_seed(6))
    assert torch.equal(loaded.sample(times, 50, torch.Generator().manual_seed(6)), expected)


def test_energy_score_bias_on_five_wells(five_wells, monkeypatch):
    # The loss of NeuralSDE is minimised over the exact drift scaled by c, with the exact
    # noise, on every transition of the training ensemble. Common random numbers make the
    # comparison between multipliers precise. A chain with dt = 5e-3 reproduces the five
    # wells with c within 10% of 1 (the drift bias of the default step).
    path, train, _ = five_wells
    system = RotatingWells()
    model = NeuralSDE(
        dim=2,
        horizon=WELLS_HORIZON,
        domain=WELLS_DOMAIN,
        diffusion=WELLS_NOISE,
        learn_diffusion=False,
        n_loss_samples=4,
        transitions_per_step=None,
        data_scale=float(train.std()),
    )
    times = torch.from_numpy(frame_times(WELLS_HORIZON, 21).numpy()).float()
    x = torch.from_numpy(train)[None]
    t = times[None]

    def loss(multiplier):
        monkeypatch.setattr(model, "drift", lambda z, s: multiplier * system.drift(z, s))
        torch.manual_seed(0)
        with torch.no_grad():
            return float(model.loss(x, t))

    multipliers = np.arange(0.7, 1.45, 0.1)
    losses = np.array([loss(float(multiplier)) for multiplier in multipliers])
    # The vertex of the parabola through the grid minimum and its neighbours.
    index = int(np.clip(np.argmin(losses), 1, len(losses) - 2))
    curve = np.polyfit(multipliers[index - 1 : index + 2], losses[index - 1 : index + 2], 2)
    best = -curve[1] / (2 * curve[0])
    assert abs(best - 1) <= 0.1, f"best drift multiplier {best:.3f}"


@pytest.mark.parametrize("model_class", [FrameBridge, NeuralSDE])
def test_validation_loss_is_repeatable(model_class):
    # Outside training the loss draws from seed 0, so two evaluations agree exactly, and
    # the global random state is left as it was.
    model = model_class(
        dim=2, horizon=1.0, domain=WELLS_DOMAIN, data_scale=0.5, **NOISE_SETTINGS[model_class]
    )
    x = torch.randn(2, 2, 16, 2, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([[0.0, 0.1], [0.1, 0.2]])
    model.eval()
    state = torch.random.get_rng_state()

    first = model.loss(x, t)
    second = model.loss(x, t)

    assert torch.equal(first, second)
    assert torch.equal(torch.random.get_rng_state(), state)
