"""Layer and activation offloading: blocks wait in CPU memory as their masters between uses, are used through
copies, and training gives what it gives without offloading (LoRA and full fine-tuning)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
import torch

from onetrainer.model_setup.diffusion import DiffusionSetup
from onetrainer.util.errors import UserError
from onetrainer.util.family import families, get_family

if TYPE_CHECKING:
    from conftest import PageLocks

TINY = sorted((spec.name, sorted(spec.tiny)[0]) for spec in families() if spec.tiny)


@pytest.fixture
def make_setup(tiny_setup: Callable[..., DiffusionSetup]) -> Callable[..., DiffusionSetup]:
    """`make_setup(family, tiny, method, **settings)`: a rank-4 LoRA or a full fine-tune, with gradient
    checkpointing."""

    def make(family: str, tiny: str, method: str, **settings: Any) -> DiffusionSetup:
        training = {"gradient_checkpointing": True, **settings.pop("training", {})}
        return tiny_setup(family, tiny, method=method, lora={"rank": 4}, training=training, **settings)

    return make


@pytest.fixture
def train(adamw_losses: Callable[..., list[float]]) -> Callable[..., list[float]]:
    """`train(setup, steps=2)`: the losses of `steps` AdamW steps on one batch, each step with its own noise."""

    def run(setup: DiffusionSetup, steps: int = 2) -> list[float]:
        return adamw_losses(setup, steps, lr=1e-2)

    return run


def _denoiser(setup: DiffusionSetup) -> str:
    return setup.spec.denoiser.name


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize(("family", "tiny"), TINY)
def test_offloaded_blocks_train_as_resident_ones(
    family: str, tiny: str, method: str, make_setup: Callable[..., DiffusionSetup], train: Callable[..., list[float]]
) -> None:
    resident = make_setup(family, tiny, method)
    name = _denoiser(resident)
    offloaded = make_setup(family, tiny, method, parts={name: {"offload_blocks": 1.0}})
    offloader = offloaded.offloaders[name]
    assert len(offloader.blocks) >= 2
    assert train(offloaded) == pytest.approx(train(resident), rel=1e-5, abs=1e-6)
    ours, reference = offloaded.trainable_state_dict(), resident.trainable_state_dict()
    assert ours.keys() == reference.keys()
    for key, value in ours.items():
        assert torch.allclose(value, reference[key], rtol=1e-5, atol=1e-6), key
    ran = {index for pair in offloader.successors for index in pair} | set(offloader.successors.values())
    assert ran - {None} == set(range(len(offloader.blocks))), "every block ran through the hooks"


@pytest.mark.parametrize("no_grad_pass", [False, True], ids=["training", "with a no-grad pass"])
@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize(("family", "tiny"), [("flux-dev", "flux-dev"), ("sdxl", "sdxl")])
def test_once_the_order_is_learnt_every_block_is_copied_ahead_of_its_use(
    family: str,
    tiny: str,
    method: str,
    no_grad_pass: bool,
    make_setup: Callable[..., DiffusionSetup],
    train: Callable[..., list[float]],
    latent_batch: Callable[..., dict[str, Any]],
) -> None:
    """Forward and backward (which recomputes a UNet's blocks in another order than the reverse), step after
    step, holding one block's copies ahead at most; a no-grad pass between the steps (prior-preservation
    samples, a preview) between the same blocks is told apart. A fully trained block copied ahead across the
    optimizer's update is stale and copied again."""
    name = get_family(family).denoiser.name
    setup = make_setup(family, tiny, method, parts={name: {"offload_blocks": 1.0}})
    offloader = setup.offloaders[name]
    in_line: list[int] = []
    copy_in = offloader._copy_in

    def recording_copy(unit: Any, *, ahead: bool) -> None:
        if ahead:
            assert all(other.copies is None for other in offloader._units), "one block's copies ahead at most"
        else:
            in_line.append(unit.index)
        copy_in(unit, ahead=ahead)

    def step() -> None:
        if no_grad_pass:
            with torch.no_grad():
                setup.predict(latent_batch(setup.spec), torch.Generator().manual_seed(0))
        train(setup, steps=1)

    offloader._copy_in = recording_copy  # type: ignore[method-assign]
    step()
    step()
    assert in_line, "the first passes copy in line"
    in_line.clear()
    step()
    assert len(in_line) == (0 if method == "lora" else 1)


@pytest.mark.parametrize("blocks", [1, 2])
def test_a_flop_count_between_steps_leaves_no_fake_tensor_behind(
    blocks: int,
    make_setup: Callable[..., DiffusionSetup],
    train: Callable[..., list[float]],
    latent_batch: Callable[..., dict[str, Any]],
) -> None:
    """The trainer counts FLOPs on fake tensors after the first step of each batch shape: the offloader's hooks
    run in that pass too, and must neither learn from it nor keep its copies for a real pass."""
    import contextlib

    from onetrainer.trainer.flops import count_flops, step_pass

    def losses(count: bool) -> list[float]:
        setup = make_setup("sd15", "sd15", "lora", parts={"unet": {"offload_blocks": blocks}})
        run = train(setup, steps=1)
        if count:
            trained = [param for group in setup.parameter_groups() for param in group["params"]]
            generator = torch.Generator().manual_seed(0)
            one_pass = step_pass(setup, generator, contextlib.nullcontext, trained)
            assert count_flops(lambda: one_pass(latent_batch(setup.spec))) > 0
        return run + train(setup, steps=1) + train(setup, steps=1)

    assert losses(count=True) == losses(count=False)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_blocks_hold_their_cpu_masters_between_uses_and_copies_while_they_run(
    method: str, make_setup: Callable[..., DiffusionSetup], train: Callable[..., list[float]]
) -> None:
    setup = make_setup("sd15", "sd15", method, parts={"unet": {"offload_blocks": 2}})
    offloader = setup.offloaders["unet"]
    assert len(offloader.blocks) == 2
    seen: dict[int, list[int]] = {}

    def record(index: int) -> Any:
        def hook(module: torch.nn.Module, args: Any) -> None:
            seen.setdefault(index, []).extend(param.data_ptr() for param in module.parameters(recurse=False))

        return hook

    for index, (_, block) in enumerate(offloader.blocks):
        for module in block.modules():
            if any(True for _ in module.parameters(recurse=False)):
                module.register_forward_pre_hook(record(index))
                break
    train(setup, steps=1)
    trained = {id(param) for params in setup.trainables.parameter_lists().values() for param in params}
    for index, (_, block) in enumerate(offloader.blocks):
        masters = offloader.masters(index)
        assert masters, "the block has offloaded weights"
        assert all(param.device.type == "cpu" for param in masters)
        held = {id(param) for param in block.parameters()}
        assert {id(param) for param in masters} <= held, "between uses the block holds its masters"
        assert (method == "full") == any(id(param) in trained for param in masters), "trained weights offload in full"
        pointers = {param.data_ptr() for param in masters}
        assert seen[index], "the block ran"
        assert not pointers & set(seen[index]), "while it runs the block uses copies"
    untouched = [p for p in setup.model.components["unet"].parameters() if not offloader.holds(p)]
    assert untouched, "the rest of the denoiser stays resident"


def test_activation_offload_gives_the_same_training(
    make_setup: Callable[..., DiffusionSetup], train: Callable[..., list[float]]
) -> None:
    reference = train(make_setup("sd15", "sd15", "lora"))
    offloaded = train(make_setup("sd15", "sd15", "lora", training={"activation_offload": True}))
    assert offloaded == pytest.approx(reference, rel=1e-6)


def test_more_blocks_than_the_denoiser_has_is_an_error(make_setup: Callable[..., DiffusionSetup]) -> None:
    with pytest.raises(UserError, match="asks for 2000 blocks, but the UNet has 12"):
        make_setup("sd15", "sd15", "lora", parts={"unet": {"offload_blocks": 2000}})


@pytest.mark.parametrize("dtype", ["fp8", "int8"])
def test_quantised_blocks_offload_too(
    dtype: str, make_setup: Callable[..., DiffusionSetup], train: Callable[..., list[float]]
) -> None:
    quantised = {"unet": {"weight_dtype": dtype}}
    resident = make_setup("sd15", "sd15", "lora", parts=quantised)
    offloaded = make_setup("sd15", "sd15", "lora", parts={"unet": {**quantised["unet"], "offload_blocks": 1.0}})
    assert train(offloaded) == pytest.approx(train(resident), rel=1e-5, abs=1e-6)
    masters = offloaded.offloaders["unet"].masters(0)
    assert any(type(master).__name__ != "Parameter" for master in masters), "quantised weights wait in CPU memory"


def _linear_blocks(count: int, dtype: str, *, bias: bool) -> list[torch.nn.Sequential]:
    """`count` blocks of a 64-wide linear layer (stored as `dtype`: fp32, or fp8/int8 computed in bf16) and a SiLU."""
    from onetrainer.model.quantised import quantise_linear

    def linear() -> torch.nn.Module:
        layer = torch.nn.Linear(64, 64, bias=bias)
        return layer if dtype == "fp32" else quantise_linear(layer, dtype, torch.bfloat16)

    return [torch.nn.Sequential(linear(), torch.nn.SiLU()) for _ in range(count)]


@pytest.mark.parametrize("dtype", ["fp32", "fp8", "int8"])
def test_masters_are_pinned_quantised_ones_through_their_inner_tensors(dtype: str, page_locks: PageLocks) -> None:
    """A pageable master would make every copy ahead a synchronous one. A quantised weight (a torchao tensor
    subclass) has no data of its own: its values and scales are pinned, and it computes what it did. Each
    block's masters are page-locked together, in one buffer of their size (`util.pinned`)."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    from onetrainer.model_setup.offload import BlockOffloader

    torch.manual_seed(0)
    blocks = _linear_blocks(2, dtype, bias=True)
    module = torch.nn.Sequential(*blocks).requires_grad_(False)
    sample = torch.randn(3, 64)
    expected = module(sample)
    before = [block[0].weight for block in blocks]

    offloader = BlockOffloader(module, list(module.named_children()), torch.device("cpu"), pin_memory=True)

    assert len(page_locks.registered) == len(blocks), "one registration per block"

    for index, block in enumerate(blocks):
        master, bias = offloader.masters(index)
        assert page_locks.holds(bias)
        assert block[0].weight is master, "the module holds the pinned master"
        assert type(master) is type(before[index])
        assert isinstance(master, torch.nn.Parameter)
        assert not master.requires_grad
        if dtype == "fp32":
            assert master is before[index], "a plain weight is pinned in place (the optimizer may hold it)"
            assert page_locks.holds(master)
        else:
            assert is_traceable_wrapper_subclass(master)
            inner = master.__tensor_flatten__()[0]
            assert inner
            assert all(page_locks.holds(getattr(master, name)) for name in inner)
    assert torch.equal(module(sample), expected)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp32", "fp8", "int8"])
def test_on_a_gpu_masters_are_pinned_and_blocks_compute_what_resident_ones_do(dtype: str) -> None:
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    from onetrainer.model_setup.offload import BlockOffloader

    torch.manual_seed(0)
    blocks = _linear_blocks(3, dtype, bias=True)
    module = torch.nn.Sequential(*blocks).requires_grad_(False)
    sample = torch.randn(3, 64)
    expected = module.to("cuda")(sample.cuda())
    module.to("cpu")
    offloader = BlockOffloader(module, list(module.named_children()), torch.device("cuda"))
    for index in range(len(blocks)):
        for master in offloader.masters(index):
            assert master.device.type == "cpu"
            inner = master.__tensor_flatten__()[0] if is_traceable_wrapper_subclass(master) else []
            assert all(tensor.is_pinned() for tensor in [getattr(master, name) for name in inner] or [master])
    for _ in range(3):  # the third pass copies every block ahead, on the side stream
        torch.testing.assert_close(module(sample.cuda()), expected)
    assert all(master.device.type == "cpu" for index in range(len(blocks)) for master in offloader.masters(index))


@pytest.mark.parametrize("pin_memory", [False, True])
def test_an_offloaded_activation_is_a_copy_in_cpu_memory_that_comes_back_equal(
    pin_memory: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onetrainer.model_setup.offload import activations_in_cpu_memory

    pinned: list[bool] = []
    if pin_memory and not torch.cuda.is_available():
        real_empty = torch.empty  # pinning needs an accelerator: an ordinary allocation stands in

        def empty(*args: Any, pin_memory: bool = False, **kwargs: Any) -> torch.Tensor:
            pinned.append(pin_memory)
            return real_empty(*args, **kwargs)

        monkeypatch.setattr(torch, "empty", empty)
    hooks = activations_in_cpu_memory(pin_memory)
    saved = torch.randn(4, 6, device="cuda" if torch.cuda.is_available() else "cpu").t()
    device, packed = hooks.pack_hook(saved)
    assert packed.device.type == "cpu"
    if pin_memory or saved.is_cuda:  # (unpinned, a CPU tensor is already where it should be)
        assert packed.untyped_storage().data_ptr() != saved.untyped_storage().data_ptr()
    assert packed.is_pinned() if pin_memory and torch.cuda.is_available() else pinned == ([True] if pin_memory else [])
    restored = hooks.unpack_hook((device, packed))
    assert restored.device == saved.device
    assert torch.equal(restored, saved)


def test_a_module_split_across_devices_has_no_single_device_to_be_put_back_on() -> None:
    """After a preview the sampler puts each component back where it was, unless it is split across devices
    (offloaded blocks): moving it whole would bring every CPU master to the GPU."""
    from onetrainer.model_sampler.pipeline import single_device

    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    assert single_device(module) == torch.device("cpu")
    module[1].to("meta")
    assert single_device(module) is None
    assert single_device(module[1]) == torch.device("meta")


@pytest.mark.gpu
def test_on_a_gpu_a_preview_leaves_the_offloaded_blocks_in_cpu_memory(
    tiny_base: Callable[[str], Any],
) -> None:
    import copy

    from onetrainer.util.config.loader import validate
    from onetrainer.util.registry import ModuleKind, lookup

    settings = {
        "model": {"type": "sd15", "base": "tiny:sd15"},
        "method": "full",
        "parts": {"unet": {"offload_blocks": 1.0}},
        "training": {"gradient_checkpointing": True},
    }
    setup = lookup(ModuleKind.SETUP, "sd15")(copy.deepcopy(tiny_base("sd15")), validate(settings, check_paths=False))
    setup.prepare(torch.device("cuda"), torch.float32)
    offloader = setup.offloaders["unet"]
    masters = [master for index in range(len(offloader.blocks)) for master in offloader.masters(index)]
    assert masters
    sampler = lookup(ModuleKind.SAMPLER, "sd15")(setup.model, layer_skip={})
    (image,) = sampler.sample("a red circle", steps=2, width=64, height=64)
    assert image.size == (64, 64)
    assert all(master.device.type == "cpu" and master.is_pinned() for master in masters)
    assert next(setup.model.denoiser.conv_in.parameters()).device.type == "cuda"


@pytest.mark.parametrize("method", ["lora", "full"])
def test_channels_last_weights_of_offloaded_blocks_are_their_pinned_masters(
    method: str, make_setup: Callable[..., DiffusionSetup], page_locks: PageLocks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`training.channels_last` converts the weights before the placement pins them: converted after, each
    convolution weight's pinned master would be replaced by a pageable copy."""
    from onetrainer.model_setup import offload

    offloader = offload.BlockOffloader
    monkeypatch.setattr(
        offload, "BlockOffloader", lambda *args, **kwargs: offloader(*args, **kwargs | {"pin_memory": True})
    )
    setup = make_setup(
        "sd15", "sd15", method, parts={"unet": {"offload_blocks": 1.0}}, training={"channels_last": True}
    )
    masters = [
        master
        for index in range(len(setup.offloaders["unet"].blocks))
        for master in setup.offloaders["unet"].masters(index)
    ]
    convolutions = [master for master in masters if master.dim() == 4]
    assert convolutions
    assert all(master.is_contiguous(memory_format=torch.channels_last) for master in convolutions)
    assert all(page_locks.holds(master) for master in masters)


@pytest.mark.parametrize("optimizer", ["adamw", "prodigy", "came"])
def test_a_copy_taken_ahead_is_stale_after_any_optimizer_updates_its_masters(optimizer: str) -> None:
    """Prodigy and CAME update `param.data`, and bitsandbytes' 8-bit AdamW (CUDA only) updates through its own
    kernels: neither moves the version counter the offloader tells a stale copy by, unless the optimizer built
    for a run with weights in CPU memory marks its steps. Without that, from the third step the first block ran
    on the copy taken before the update."""
    from torch.utils.checkpoint import checkpoint

    from onetrainer.model_setup.offload import BlockOffloader
    from onetrainer.trainer.optimizers import build_optimizer
    from onetrainer.util.config.training import TrainingConfig

    def losses(offloaded: bool) -> list[float]:
        torch.manual_seed(0)
        blocks = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Tanh()) for _ in range(3)])
        offloader = None
        if offloaded:
            offloader = BlockOffloader(blocks, list(blocks.named_children()), torch.device("cpu"), offload_trained=True)
        training = TrainingConfig.model_validate({"optimizer": optimizer, "learning_rate": 1e-2})
        groups = [{"params": list(blocks.parameters()), "lr": 1e-2, "name": "model"}]
        built = build_optimizer(groups, training, torch.device("cpu"))
        generator = torch.Generator().manual_seed(1)
        found = []
        for _ in range(5):
            inputs, targets = torch.randn(8, 16, generator=generator), torch.randn(8, 16, generator=generator)
            with offloader.forward_context() if offloader is not None else contextlib.nullcontext():
                hidden = inputs
                for block in blocks:
                    hidden = checkpoint(block, hidden, use_reentrant=False)
                loss = torch.nn.functional.mse_loss(hidden, targets)
            loss.backward()
            built.step()
            built.zero_grad(set_to_none=True)
            found.append(loss.item())
        return found

    assert losses(offloaded=True) == losses(offloaded=False)
