"""manual_step keywords with several optimizers, closures, requires_grad toggling, defaults and argument checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import TwoNets, fp16_plugin, loader, trainer
from torch import nn

from manualopt import InvalidStepArgumentError, StepResult, UnknownOptimizerError


class PerOptimizerConfig(TwoNets):
    """D accumulates 2 batches and clips by norm; G steps every batch unclipped; each has its own scheduler."""

    def __init__(self, through_defaults: bool = False) -> None:
        super().__init__()
        self.through_defaults = through_defaults
        self.results: list[tuple[StepResult, StepResult]] = []
        self.lrs: list[tuple[float, float]] = []

    def configure_optimizers(self) -> Any:
        opt_g = torch.optim.SGD(self.generator.parameters(), lr=1.0)
        opt_d = torch.optim.SGD(self.discriminator.parameters(), lr=1.0)
        discriminator: dict[str, Any] = {
            "optimizer": opt_d,
            "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt_d, 1, gamma=0.5), "interval": "epoch"},
        }
        if self.through_defaults:
            discriminator.update(accumulate_grad_batches=2, gradient_clip_val=1e-3)
        return {
            "generator": {
                "optimizer": opt_g,
                "lr_scheduler": {
                    "scheduler": torch.optim.lr_scheduler.StepLR(opt_g, 1, gamma=0.9),
                    "interval": "step",
                    "frequency": 3,
                },
            },
            "discriminator": discriminator,
        }

    def training_step(self, batch: Any, batch_idx: int) -> None:
        g_loss, d_loss = self.losses(batch)
        options = {} if self.through_defaults else {"accumulate_grad_batches": 2, "gradient_clip_val": 1e-3}
        before = [
            torch.cat([p.detach().flatten() for p in net.parameters()]) for net in (self.generator, self.discriminator)
        ]
        d = self.manual_step("discriminator", d_loss, **options)
        g = self.manual_step("generator", g_loss)
        after = [
            torch.cat([p.detach().flatten() for p in net.parameters()]) for net in (self.generator, self.discriminator)
        ]
        self.changes = getattr(self, "changes", [])
        self.changes.append(tuple(float((a - b).norm()) for a, b in zip(after, before, strict=True)))
        self.results.append((g, d))

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.seen_norms = getattr(self, "seen_norms", [])
        norms = [p.grad.norm() for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        self.seen_norms.append((optimizer is self.trainer.optimizers[1], float(torch.stack(norms).norm())))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        opt_g, opt_d = self.trainer.optimizers
        self.lrs.append((opt_g.param_groups[0]["lr"], opt_d.param_groups[0]["lr"]))


@pytest.mark.parametrize("through_defaults", [False, True], ids=["keywords", "configure_optimizers-defaults"])
def test_each_optimizer_follows_its_own_config(tmp_path: Path, through_defaults: bool) -> None:
    model = PerOptimizerConfig(through_defaults)
    fit = trainer(tmp_path, max_epochs=2)
    fit.fit(model, loader(5))  # 5 batches: D's window of 2 leaves a partial window at each epoch's end
    d_stepped = [d.stepped for _, d in model.results]
    assert d_stepped == [False, True, False, True, True] * 2
    assert [d.accumulated for _, d in model.results][:3] == [1, 0, 1]
    assert all(g.stepped for g, _ in model.results)
    assert dict(model.optimizer_updates) == {"generator": 10, "discriminator": 6}
    assert fit.global_step == 10  # G stepped every batch: every batch is a training step
    # G's step scheduler: every 3rd batch of the epoch (batch_idx + 1), as in automatic optimization.
    assert [lr_g for lr_g, _ in model.lrs] == pytest.approx([1, 1, 0.9, 0.9, 0.9, 0.9, 0.9, 0.81, 0.81, 0.81])
    # D's epoch scheduler halves the rate once per epoch, after the last batch's training step and before its
    # on_train_batch_end, which is where automatic optimization steps epoch-interval schedulers.
    assert [lr_d for _, lr_d in model.lrs] == [1.0] * 4 + [0.5] * 5 + [0.25]


def test_clipping_applies_to_its_optimizer_only(tmp_path: Path) -> None:
    model = PerOptimizerConfig()
    trainer(tmp_path, max_epochs=1).fit(model, loader(5))
    # on_before_optimizer_step sees unclipped gradients (as in automatic optimization): large for both optimizers
    assert all(norm > 1e-2 for _, norm in model.seen_norms)
    assert {is_discriminator for is_discriminator, _ in model.seen_norms} == {True, False}
    # the discriminator's updates are clipped to norm 1e-3 (lr 1); the generator's are not
    generator_changes = [g for g, _ in model.changes]
    discriminator_changes = [
        d for (_, d), (_, result) in zip(model.changes, model.results, strict=True) if result.stepped
    ]
    assert len(discriminator_changes) == 3
    assert all(0 < d <= 1e-3 * (1 + 1e-5) for d in discriminator_changes)
    assert all(g > 1e-2 for g in generator_changes)


class GeneratorAccumulates(TwoNets):
    """D every batch, G accumulating 3 but called only on even batches: G's window must still close at epoch end."""

    def training_step(self, batch: Any, batch_idx: int) -> None:
        g_loss, d_loss = self.losses(batch)
        self.manual_step("discriminator", d_loss)
        if batch_idx % 2 == 0:
            self.manual_step("generator", g_loss, accumulate_grad_batches=3)

    def on_train_epoch_end(self) -> None:
        self.grads_at_epoch_end = [p.grad for p in self.generator.parameters()]


def test_open_windows_close_at_epoch_end(tmp_path: Path) -> None:
    model = GeneratorAccumulates()
    fit = trainer(tmp_path, max_epochs=2)
    fit.fit(model, loader(10))
    # G is called on batches 0, 2, 4, 6, 8: windows (0, 2, 4) and (6, 8) -> the second closes after batch 9
    assert dict(model.optimizer_updates) == {"generator": 4, "discriminator": 20}
    assert model.grads_at_epoch_end == [None, None]
    assert fit.global_step == 20


def test_clipping_clips(tmp_path: Path) -> None:
    class Clipped(TwoNets):
        def training_step(self, batch: Any, batch_idx: int) -> None:
            g_loss, _ = self.losses(batch)
            before = self.generator.weight.detach().clone()
            self.manual_step("generator", g_loss * 1000, gradient_clip_val=0.01)
            self.change = float((self.generator.weight.detach() - before).norm())

        def configure_optimizers(self) -> Any:
            return {"generator": torch.optim.SGD(self.generator.parameters(), lr=1.0)}

    model = Clipped()
    trainer(tmp_path, max_epochs=1, limit_train_batches=1).fit(model, loader())
    assert model.change <= 0.01 + 1e-6  # lr 1 x clipped gradient norm 0.01 (weight and bias share the norm)


class LBFGSAndSAM(TwoNets):
    """LBFGS needs a closure; SAM is a two-pass step over a base optimizer: both count one update per call."""

    def configure_optimizers(self) -> Any:
        return {
            "generator": torch.optim.LBFGS(self.generator.parameters(), lr=0.5, max_iter=4),
            "discriminator": SAM(self.discriminator.parameters(), torch.optim.SGD, lr=0.05),
        }

    def training_step(self, batch: Any, batch_idx: int) -> None:
        self.manual_step("generator", closure=lambda: self.losses(batch)[0])
        self.manual_backward(self.losses(batch)[1])  # SAM's first pass
        self.manual_step("discriminator", closure=lambda: self.losses(batch)[1])


class SAM(torch.optim.Optimizer):
    """Sharpness-aware minimization: climb to w + rho * g / |g|, take the gradient there, step from w."""

    def __init__(self, params: Any, base: type[torch.optim.Optimizer], rho: float = 0.05, **kwargs: Any) -> None:
        super().__init__(params, {"rho": rho, **kwargs})
        self.base_optimizer = base(self.param_groups, **kwargs)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.stack([p.grad.norm() for p in params]).norm()
        shifts = []
        for p in params:
            shift = p.grad * (self.param_groups[0]["rho"] / (norm + 1e-12))
            p.add_(shift)
            shifts.append(shift)
        with torch.enable_grad():
            loss = closure()
        for p, shift in zip(params, shifts, strict=True):
            p.sub_(shift)
        self.base_optimizer.step()
        return loss


def test_closures_lbfgs_and_two_pass_sam(tmp_path: Path) -> None:
    model = LBFGSAndSAM()
    before = model.discriminator.weight.detach().clone()
    fit = trainer(tmp_path, max_epochs=1)
    fit.fit(model, loader())
    assert dict(model.optimizer_updates) == {"generator": 10, "discriminator": 10}
    assert fit.global_step == 10
    assert not torch.equal(model.discriminator.weight, before)


class Toggling(TwoNets):
    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, _ = batch
        with self.toggled_optimizer("generator"):
            with self.toggled_optimizer("generator", "discriminator"):  # nested: the inner block may widen it
                self.inner = [p.requires_grad for p in self.discriminator.parameters()]
            self.outer = [p.requires_grad for p in self.discriminator.parameters()]
            g_loss = self.discriminator(x * self.generator(x)).mean()
            self.manual_backward(g_loss)
            self.discriminator_grads = [p.grad for p in self.discriminator.parameters()]
            self.manual_step("generator")
        self.after = [p.requires_grad for p in self.parameters()]
        self.manual_step("discriminator", self.losses(batch)[1])


def test_toggled_optimizer_freezes_the_other_optimizers(tmp_path: Path) -> None:
    model = Toggling()
    trainer(tmp_path, max_epochs=1, limit_train_batches=2).fit(model, loader())
    assert model.inner == [True, True]
    assert model.outer == [False, False]
    assert model.discriminator_grads == [None, None]  # no gradient was computed for the discriminator
    assert model.after == [True, True, True, True]


def test_toggled_optimizer_restores_after_an_error_and_refuses_unknown_names(tmp_path: Path) -> None:
    class Fails(TwoNets):
        def training_step(self, batch: Any, batch_idx: int) -> None:
            with pytest.raises(UnknownOptimizerError, match="'critic'"), self.toggled_optimizer("critic"):
                pass
            with pytest.raises(ZeroDivisionError), self.toggled_optimizer("generator"):
                raise ZeroDivisionError
            self.flags = [p.requires_grad for p in self.parameters()]
            super().training_step(batch, batch_idx)

    model = Fails()
    trainer(tmp_path, max_epochs=1, limit_train_batches=1).fit(model, loader())
    assert model.flags == [True, True, True, True]


@pytest.mark.parametrize("variant", ["foreach", "fused", "compiled"])
def test_fast_optimizers_and_compiled_submodules(tmp_path: Path, variant: str) -> None:
    class Fast(TwoNets):
        def configure_optimizers(self) -> Any:
            kwargs = {"foreach": True} if variant == "foreach" else {"fused": True} if variant == "fused" else {}
            return {
                "generator": torch.optim.Adam(self.generator.parameters(), lr=0.01, **kwargs),
                "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=0.01, **kwargs),
            }

    model = Fast()
    if variant == "compiled":
        model.generator = torch.compile(model.generator, backend="aot_eager")  # type: ignore[assignment]
    before = [p.detach().clone() for p in model.parameters()]
    fit = trainer(tmp_path, max_epochs=1)
    fit.fit(model, loader())
    assert fit.global_step == 10
    assert dict(model.optimizer_updates) == {"generator": 10, "discriminator": 10}
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


CLIP_VALUE = "gradient_clip_val must be a finite non-negative number or None,"


class BadArguments(TwoNets):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.kwargs = kwargs

    def training_step(self, batch: Any, batch_idx: int) -> None:
        loss = self.losses(batch)[0]
        self.manual_step("generator", **{"loss": loss, **self.kwargs})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"accumulate_grad_batches": 0}, "accumulate_grad_batches must be a positive integer, not 0"),
        ({"accumulate_grad_batches": 2.0}, "accumulate_grad_batches must be a positive integer, not 2.0"),
        ({"gradient_clip_val": -1}, "gradient_clip_val must be a finite non-negative number or None, not -1"),
        (
            {"gradient_clip_val": float("nan")},
            "gradient_clip_val must be a finite non-negative number or None, not nan",
        ),
        (
            {"gradient_clip_val": float("inf")},
            "gradient_clip_val must be a finite non-negative number or None, not inf",
        ),
        ({"gradient_clip_val": 1j}, "gradient_clip_val must be a finite non-negative number or None, not 1j"),
        ({"gradient_clip_algorithm": "l2"}, "gradient_clip_algorithm must be 'norm', 'value' or None, not 'l2'"),
        ({"closure": lambda: None}, "pass either a loss or a closure"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidStepArgumentError, match=rf"manual_step\('generator'\): {message}"):
        trainer(tmp_path, max_epochs=1).fit(BadArguments(**kwargs), loader())


def test_bad_defaults_are_refused_when_fit_starts(tmp_path: Path) -> None:
    class BadDefaults(TwoNets):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"generator": {"optimizer": opt, "accumulate_grad_batches": -2}}

    model = BadDefaults()
    with pytest.raises(InvalidStepArgumentError, match="configure_optimizers, optimizer 'generator'"):
        trainer(tmp_path).fit(model, loader())
    assert model.training_step_calls == 0


def test_a_step_shared_module_keeps_requires_grad_of_frozen_parameters(tmp_path: Path) -> None:
    class Frozen(TwoNets):
        def __init__(self) -> None:
            super().__init__()
            self.discriminator.bias.requires_grad_(False)

        def training_step(self, batch: Any, batch_idx: int) -> None:
            with self.toggled_optimizer("generator"):
                pass
            self.bias_flag = self.discriminator.bias.requires_grad
            super().training_step(batch, batch_idx)

        def configure_optimizers(self) -> Any:
            return {
                "generator": torch.optim.SGD(self.generator.parameters(), lr=0.01),
                "discriminator": torch.optim.SGD(nn.ParameterList(self.discriminator.parameters()), lr=0.01),
            }

    model = Frozen()
    trainer(tmp_path, max_epochs=1, limit_train_batches=1).fit(model, loader())
    assert model.bias_flag is False  # a parameter frozen by the user stays frozen after the block


def test_lbfgs_without_closure_is_refused_before_backward(tmp_path: Path) -> None:
    class NoClosure(TwoNets):
        def configure_optimizers(self) -> Any:
            return {"generator": torch.optim.LBFGS(self.generator.parameters())}

        def training_step(self, batch: Any, batch_idx: int) -> None:
            try:
                self.manual_step("generator", self.losses(batch)[0])
            finally:
                self.grads = [p.grad for p in self.generator.parameters()]

    model = NoClosure()
    with pytest.raises(InvalidStepArgumentError, match=r"LBFGS .* needs a closure.*closure=lambda"):
        trainer(tmp_path).fit(model, loader())
    assert model.grads == [None, None]


class Fp16(TwoNets):
    """16-bit AMP with a GradScaler (on CPU): batch 3's loss is infinite, so the scaler skips that update."""

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.generator.parameters(), lr=1.0)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
        return {"generator": {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}}

    def training_step(self, batch: Any, batch_idx: int) -> None:
        g_loss = self.losses(batch)[0] * 10
        if batch_idx == 3:
            g_loss = g_loss * float("inf")
        before = torch.cat([p.detach().flatten() for p in self.generator.parameters()])
        result = self.manual_step("generator", g_loss, gradient_clip_val=1e-3)
        after = torch.cat([p.detach().flatten() for p in self.generator.parameters()])
        self.log_ = getattr(self, "log_", [])
        self.log_.append(
            (result.stepped, float((after - before).norm()), self.trainer.optimizers[0].param_groups[0]["lr"])
        )


def test_fp16_clips_after_unscaling_and_skipped_steps_do_not_count(tmp_path: Path) -> None:
    model = Fp16()
    fit = trainer(tmp_path, max_epochs=1, plugins=[fp16_plugin()])
    fit.fit(model, loader())
    stepped = [s for s, _, _ in model.log_]
    assert stepped == [True, True, True, False, True, True, True, True, True, True]
    for did_step, change, rate in model.log_:
        if did_step:
            # clipped after unscaling: the update is lr x 1e-3, not 1e-3 / scale (clipping the scaled gradients)
            assert change == pytest.approx(rate * 1e-3, rel=1e-2)  # float32 rounding of tiny updates
        else:
            assert change == 0
    # the step-interval scheduler halves the rate after each real update only (it steps after training_step)
    rates = [lr for _, _, lr in model.log_]
    assert rates == [0.5 ** sum(stepped[:i]) for i in range(10)]
    assert fit.global_step == sum(stepped) == model.optimizer_updates["generator"]


def test_toggled_optimizer_under_torch_compile(tmp_path: Path) -> None:
    class Compiled(TwoNets):
        def __init__(self) -> None:
            super().__init__()
            self.critic = torch.compile(self.discriminator, backend="aot_eager")

        def training_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            with self.toggled_optimizer("generator"):
                g_loss = self.critic(x * self.generator(x)).mean()
                self.manual_backward(g_loss)
                self.critic_grads = [p.grad for p in self.discriminator.parameters()]
                self.manual_step("generator")
            d_loss = nn.functional.mse_loss(self.critic(x), -y)  # the same compiled module, trainable again
            self.d_result = self.manual_step("discriminator", d_loss)

    model = Compiled()
    before = [p.detach().clone() for p in model.parameters()]
    fit = trainer(tmp_path, max_epochs=1, limit_train_batches=3)
    fit.fit(model, loader())
    assert model.critic_grads == [None, None]
    assert model.d_result.stepped
    assert dict(model.optimizer_updates) == {"generator": 3, "discriminator": 3}
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


class BadLoss(TwoNets):
    """Calls manual_step with a loss that cannot be back-propagated, and keeps what the parameters held."""

    def __init__(self, make: Any) -> None:
        super().__init__()
        self.make = make

    def training_step(self, batch: Any, batch_idx: int) -> None:
        g_loss, _ = self.losses(batch)
        self.generator.weight.grad = torch.full_like(self.generator.weight, 7.0)
        self.before = [p.detach().clone() for p in self.generator.parameters()]
        self.grads_before = [None if p.grad is None else p.grad.clone() for p in self.generator.parameters()]
        try:
            self.manual_step("generator", self.make(self, g_loss))
        finally:
            self.after = [p.detach().clone() for p in self.generator.parameters()]
            self.grads_after = [None if p.grad is None else p.grad.clone() for p in self.generator.parameters()]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda self, loss: 3, r"the loss is a int \(3\), not a tensor.*no `.item\(\)`"),
        (lambda self, loss: loss.item(), r"the loss is a float .* not a tensor"),
        (
            lambda self, loss: loss * torch.ones(4),
            r"the loss is a tensor of shape \(4,\), not a single number.*`loss.mean\(\)`",
        ),
        (
            lambda self, loss: loss.detach(),
            r"the loss is a tensor that does not require gradients.*without `.detach\(\)`",
        ),
        (lambda self, loss: torch.tensor(3), r"the loss is a torch.int64 tensor, which has no gradient"),
    ],
    ids=["int", "float", "vector", "detached", "integer-tensor"],
)
def test_a_loss_that_cannot_be_back_propagated_is_refused_first(tmp_path: Path, make: Any, message: str) -> None:
    model = BadLoss(make)
    with pytest.raises(InvalidStepArgumentError, match=rf"manual_step\('generator'\): {message}"):
        trainer(tmp_path, max_epochs=1).fit(model, loader())
    for before, after in zip(model.before, model.after, strict=True):
        assert torch.equal(before, after)
    assert all(_same_grad(a, b) for a, b in zip(model.grads_before, model.grads_after, strict=True))


def _same_grad(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


class FreedGraph(TwoNets):
    """Uses one generator output in two losses and back-propagates the shared graph twice."""

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, _ = batch
        fake = self.generator(x)
        self.manual_step("discriminator", self.discriminator(x * fake).mean())  # frees fake's graph
        self.before = [p.detach().clone() for p in self.generator.parameters()]
        try:
            self.manual_step("generator", fake.pow(2).mean())
        finally:
            self.after = [p.detach().clone() for p in self.generator.parameters()]
            self.grads_after = [p.grad for p in self.generator.parameters()]


def test_a_second_backward_through_a_freed_graph_names_the_fix(tmp_path: Path) -> None:
    model = FreedGraph()
    expected = r"manual_step\('generator'\): the loss's graph was already freed.*retain_graph"
    with pytest.raises(InvalidStepArgumentError, match=expected):
        trainer(tmp_path, max_epochs=1).fit(model, loader())
    assert all(torch.equal(a, b) for a, b in zip(model.before, model.after, strict=True))


def test_a_closure_that_returns_no_loss_is_refused(tmp_path: Path) -> None:
    class BadClosure(TwoNets):
        def training_step(self, batch: Any, batch_idx: int) -> None:
            self.manual_step("generator", closure=lambda: float(self.losses(batch)[0]))

    with pytest.raises(InvalidStepArgumentError, match=r"manual_step\('generator'\): the closure returned a float"):
        trainer(tmp_path, max_epochs=1).fit(BadClosure(), loader())


class _OneAccumulates(TwoNets):
    """The discriminator updates on every batch; the generator gathers the gradients of 3 batches per update."""

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.manual_step("discriminator", (self.discriminator(x) - y).pow(2).mean())
        self.manual_step("generator", (self.generator(x) - y).pow(2).mean(), accumulate_grad_batches=3)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        pass


def test_a_validation_inside_an_open_accumulation_window_keeps_its_gradients(tmp_path: Path) -> None:
    """Lightning zeroes the module's gradients before a mid-epoch validation; an open window's gradients survive it.

    Regression: with validation every 2 batches, the generator's window (opened at batch 0) lost batch 0 and 1's
    gradients at the first validation, and its weights ended 0.44 away from the run without validation.
    """
    weights = []
    for validate in (False, True):
        torch.manual_seed(0)
        model = _OneAccumulates()
        if validate:
            run = trainer(tmp_path, max_epochs=1, val_check_interval=2, limit_val_batches=1)
            run.fit(model, loader(), loader(2))
        else:
            trainer(tmp_path, max_epochs=1, limit_val_batches=0).fit(model, loader())
        assert dict(model.optimizer_updates) == {"generator": 4, "discriminator": 10}
        weights.append([parameter.detach().clone() for parameter in model.parameters()])
        assert all(parameter.grad is None for parameter in model.discriminator.parameters())
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))
