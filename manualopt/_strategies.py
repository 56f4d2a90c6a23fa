"""What a fit needs from the Lightning strategy it runs under, and what a strategy's failure means for a manual module.

:func:`prepare` runs once when a fit starts, before manualopt installs its step hooks:

* ``FSDPStrategy`` that wrapped the whole module in one FSDP unit holding parameters: refused. Lightning runs
  ``training_step`` inside that unit's forward pass, where FSDP fails every backward pass, with or without manualopt.
  Each optimizer's network wrapped in an FSDP module of its own (in ``configure_model``) trains.
* ``DDPStrategy(static_graph=True)`` of a Lightning release that does not synchronize gradients of manual backward
  passes under it (2.1.0 does not; 2.6.6 does): refused, as every process would train a model of its own.
* ``DDPStrategy`` without unused-parameter detection, or with ``static_graph=True``: DDP's failure when a backward
  pass left parameters without gradients (a GAN's discriminator loss, computed on ``fake.detach()``, never reaches the
  generator) is raised as :class:`~manualopt.OptimizerConfigurationError` naming the setting that fixes it. Which
  parameters a backward pass reaches is known only when it runs, so this is explained at the first training step
  that fails; a model whose every backward pass reaches every parameter trains without the option and pays nothing.
* ``ModelParallelStrategy`` (FSDP2): torch's distributed checkpointing gives an optimizer that has no state yet one
  ``step()`` with zero gradients and learning rate 0 while it saves or loads a checkpoint. That step is not an update:
  it is allowed there, and neither counted nor folded into an ``EMA``.

Everything added is set on the fit's strategy instance (its public methods ``training_step``, ``optimizer_state`` and
``load_checkpoint``) and removed when the fit ends or fails. A strategy that replaces the optimizers (DeepSpeed) is
refused before this runs, when the fit's optimizers are read.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from manualopt._patching import patch_attribute
from manualopt.errors import OptimizerConfigurationError

if TYPE_CHECKING:
    from manualopt._session import FitSession

__all__ = ["prepare"]

#: What DDP says when a backward pass did not reach every parameter it expects a gradient for.
_DDP_UNUSED = "Expected to have finished reduction in the prior iteration"
_DDP_STATIC = "Your training graph has changed in this iteration"


def prepare(session: FitSession) -> None:
    """Add what the fit's strategy needs; every addition is undone when the fit ends.

    Raises:
        OptimizerConfigurationError: The strategy wrapped the module in a way manual optimization cannot train.
    """
    strategy = session.trainer.strategy
    model: Any = getattr(strategy, "model", None)
    if _is_fsdp(model):
        _refuse_whole_module_fsdp(session, model)
    if _is_ddp(model) and model.static_graph and not _syncs_static_graph_in_manual_optimization():
        _refuse_unsynchronized_static_graph(session)
    if _is_ddp(model) and (not model.find_unused_parameters or model.static_graph):
        explain = functools.partial(_explain_ddp, session, bool(model.static_graph))
        session.on_end(_explain_failures(strategy, explain, session))
    if _is_model_parallel(strategy):
        for name in ("optimizer_state", "load_checkpoint"):
            session.on_end(_initialization_steps_allowed(strategy, name, session))


# ---------------------------------------------------------------------------------------------------------- failures


def _explain_failures(strategy: Any, explain: Callable[[BaseException], str | None], key: object) -> Any:
    """Re-raise a failure of ``strategy.training_step`` that ``explain`` recognizes as ``OptimizerConfigurationError``.

    ``Strategy.training_step`` runs the wrapper's forward pass (where DDP may find that the previous backward pass left
    parameters without gradients) and, inside it, the module's ``training_step`` with its backward passes (where DDP
    may find it too), so one wrapper sees every such failure. Any other error passes unchanged.
    """
    inner = strategy.training_step

    @functools.wraps(inner)
    def training_step(*args: Any, **kwargs: Any) -> Any:
        try:
            return inner(*args, **kwargs)
        except RuntimeError as error:
            message = explain(error)
            if message is None:
                raise
            raise OptimizerConfigurationError(message) from error

    return patch_attribute(strategy, "training_step", training_step, key)


def _where(session: FitSession) -> str:
    module = type(session.module).__name__
    return f"`{module}` (optimizers {session.names}) at global step {session.trainer.global_step}"


def _explain_ddp(session: FitSession, static_graph: bool, error: BaseException) -> str | None:
    text = str(error)
    if _DDP_UNUSED in text:
        problem = (
            "DDP expected a gradient for every parameter from the previous backward pass, and some got none"
            " (`find_unused_parameters=False`, Lightning's default)."
        )
    elif static_graph and _DDP_STATIC in text:
        problem = (
            "DDP with `static_graph=True` assumes that every iteration reaches the same parameters, but the backward"
            " passes of one training step reach different ones."
        )
    else:
        return None
    return (
        f"{problem} Training {_where(session)} under {type(session.trainer.strategy).__name__}.\n"
        "In manual optimization each `manual_step` (or `manual_backward`) is a backward pass of its own, and one that"
        " does not reach the parameters of another optimizer leaves them without a gradient: a GAN's discriminator"
        " loss computed on `fake.detach()` never reaches the generator, and a `toggled_optimizer` block freezes the"
        " other optimizers' parameters. The passes of one training step reach different parameters, which"
        " `static_graph=True` does not allow either.\n"
        'Fix: let DDP find the unused parameters: `Trainer(strategy="ddp_find_unused_parameters_true")`, or'
        " `Trainer(strategy=DDPStrategy(find_unused_parameters=True))` with your other DDP arguments (`static_graph`"
        " left False)."
    )


def _refuse_unsynchronized_static_graph(session: FitSession) -> None:
    from lightning import __version__

    raise OptimizerConfigurationError(
        f"DDPStrategy(static_graph=True) of Lightning {__version__} does not synchronize gradients in manual"
        " optimization (Lightning-AI/pytorch-lightning#18086, fixed by PR #21251): every process would train a model"
        f" of its own. Training `{type(session.module).__name__}` (optimizers {session.names}) was refused before the"
        " first batch.\n"
        "Fix: leave `static_graph` False; with several optimizers use"
        ' `Trainer(strategy="ddp_find_unused_parameters_true")` or `DDPStrategy(find_unused_parameters=True)`. Or'
        " upgrade Lightning."
    )


def _syncs_static_graph_in_manual_optimization() -> bool:
    """Whether the installed ``DDPStrategy`` flushes DDP's first static-graph all-reduce after a manual backward pass.

    Lightning added that flush as ``DDPStrategy.post_backward`` (PR #21251); before it, DDP with ``static_graph=True``
    never all-reduced a gradient of a manual backward pass.
    """
    from lightning.pytorch.strategies import DDPStrategy, Strategy

    return DDPStrategy.post_backward is not Strategy.post_backward


def _refuse_whole_module_fsdp(session: FitSession, root: Any) -> None:
    """Refuse an FSDP unit around the whole module that holds parameters of its own.

    Lightning runs ``training_step`` inside the forward pass of the module's wrapper, so every backward pass of manual
    optimization starts before that unit's forward pass has ended, and FSDP fails it ("Expects `BACKWARD_PRE` or
    `BACKWARD_POST` state but got HandleTrainingState.FORWARD"), with or without manualopt
    (Lightning-AI/pytorch-lightning#19626 and #19685, open). Units nested inside it finish their forward passes first
    and are not affected; nor is a root that holds no parameter of its own (an ``auto_wrap_policy`` that wraps every
    parametrized layer).
    """
    nested = {
        id(parameter)
        for unit in root.modules()
        if unit is not root and _is_fsdp(unit)
        for parameter in unit.parameters()
    }
    own = [p for p in root.parameters() if p.requires_grad and id(p) not in nested]
    if not own:
        return
    raise OptimizerConfigurationError(
        f"{type(session.trainer.strategy).__name__} wrapped the whole `{type(session.module).__name__}` in one FSDP"
        f" unit that holds {len(own)} of its parameter tensors. Lightning runs `training_step` inside that unit's"
        " forward pass, and FSDP fails every backward pass made there, so no manual optimization can train it"
        " (Lightning-AI/pytorch-lightning#19685).\n"
        "Fix: wrap each optimizer's network in an FSDP module of its own in `configure_model`; Lightning then leaves"
        " the module itself unwrapped. For example:\n"
        "    def configure_model(self):\n"
        "        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP\n"
        "        self.generator = FSDP(self.generator, device_id=self.device, use_orig_params=True)\n"
        "        self.discriminator = FSDP(self.discriminator, device_id=self.device, use_orig_params=True)\n"
        "For norm clipping, call each network's own `clip_grad_norm_` in `configure_gradient_clipping`."
    )


# ---------------------------------------------------------------------------------------------------------- checkpoints


def _initialization_steps_allowed(strategy: Any, name: str, session: FitSession) -> Any:
    """Run ``strategy.<name>`` with optimizer steps allowed and not counted (torch's state initialization)."""
    inner = getattr(strategy, name)

    @functools.wraps(inner)
    def method(*args: Any, **kwargs: Any) -> Any:
        # torch.distributed.checkpoint.state_dict creates the state of an optimizer that has none (so that the state
        # has a layout to save or load into) by stepping it with zero gradients and a learning rate of 0; the weights
        # stay as they are, and loading a checkpoint then replaces that state
        with session.steps_are_not_updates():
            return inner(*args, **kwargs)

    return patch_attribute(strategy, name, method, session)


# ---------------------------------------------------------------------------------------------------------- types


def _is_ddp(model: Any) -> bool:
    from torch.nn.parallel import DistributedDataParallel

    return isinstance(model, DistributedDataParallel)


def _is_fsdp(model: Any) -> bool:
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # pragma: no cover - torch built without distributed support
        return False
    return isinstance(model, FullyShardedDataParallel)


def _is_model_parallel(strategy: Any) -> bool:
    try:
        from lightning.pytorch.strategies import ModelParallelStrategy
    except ImportError:  # Lightning < 2.4
        return False
    return isinstance(strategy, ModelParallelStrategy)
