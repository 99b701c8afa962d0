"""One frozen backbone, one LoRA adapter per agent (or one shared by all), switched per agent.

We use PEFT's *named adapters*: ``get_peft_model`` injects the first adapter into the model in
place, ``add_adapter`` the others, and ``set_adapter`` picks the one the next forward pass uses.
:class:`AgentAdapters` installs itself as the LM's ``agent_hook``, so every forward pass that the
engine runs on behalf of an agent (prefill, latent steps, decoding, a teacher-forced target) runs
with that agent's adapter: a trace is written by several adapters over one backbone.

PEFT's ``set_adapter`` also sets ``requires_grad=False`` on every adapter but the active one.
That would silently lose gradients here: an upstream agent's adapter takes part in the forward
pass and is then frozen when the next agent becomes active, and autograd skips a leaf that no
longer requires grad at backward time (its ``.grad`` stays None). So after each switch all
adapters are made trainable again; only the active one is *used*.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from diffmas.engine import LM
from diffmas.errors import DiffMASError
from diffmas.kernels.exact import is_batch_invariant, make_batch_invariant
from diffmas.kernels.packed import PackedLinear, make_packed

SHARED = "shared"  # the adapter name when all agents share one adapter


@dataclass
class LoraSettings:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05  # active only in train mode, like every dropout
    target_modules: list[str] | None = None  # None: the attention projections, detected
    shared: bool = False  # one adapter for all agents instead of one per agent
    # True: PEFT's default, every input cast to the adapters' float32; False: the products run in
    # the model's dtype on the float32 weights cast per call (AgentAdapters._products_in_model_dtype).
    float32_products: bool = True

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise DiffMASError(f"LoRA rank must be at least 1, got {self.rank}")
        if not 0 <= self.dropout < 1:
            raise DiffMASError(f"LoRA dropout must be in [0, 1), got {self.dropout}")


def attention_projections(model: nn.Module) -> list[str]:
    """Names (last component) of the linear layers inside the model's attention blocks.

    Found by structure rather than by a per-architecture list: every ``nn.Linear`` whose parent
    module's name ends in ``attn``/``attention`` (q_proj, k_proj, v_proj, o_proj for Llama, Qwen,
    Gemma, Mistral...; query_key_value/dense for others).
    """
    names: list[str] = []
    for name, module in model.named_modules():
        parent, _, leaf = name.rpartition(".")
        if isinstance(module, nn.Linear) and re.search(r"(attn|attention)$", parent.rpartition(".")[2]):
            if leaf not in names:
                names.append(leaf)
    if not names:
        raise DiffMASError("found no linear layers in attention blocks; give LoRA target_modules explicitly")
    return names


def adapter_name(agent: str) -> str:
    """A PEFT adapter name for an agent (module-dict keys may not contain dots)."""
    name = re.sub(r"\W", "_", agent)
    return name if name and not name[0].isdigit() else f"agent_{name}"


class AgentAdapters:
    """LoRA adapters for the agents of a system, on ``lm``'s model, switched by agent name."""

    def __init__(self, lm: LM, agents: Sequence[str], settings: LoraSettings | None = None):
        from peft import LoraConfig, get_peft_model

        if lm.agent_hook is not None:
            raise DiffMASError("this LM already has adapters attached")
        self.lm = lm
        self.settings = settings = settings or LoraSettings()
        self.names = {a: SHARED if settings.shared else adapter_name(a) for a in agents}
        unique = list(dict.fromkeys(self.names.values()))
        if len(unique) != len(self.names) and not settings.shared:
            raise DiffMASError(f"agent names {list(agents)} give clashing adapter names {unique}")
        config = LoraConfig(
            r=settings.rank,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            target_modules=settings.target_modules or attention_projections(lm.model),
            bias="none",
            task_type="CAUSAL_LM",
        )
        # Injects LoRA layers into lm.model in place (the LM keeps working on the same modules)
        # and freezes every base weight. PEFT 0.21 still reads a property transformers 5 deprecated.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            self.peft_model = get_peft_model(lm.model, config, adapter_name=unique[0])
        for name in unique[1:]:
            self.peft_model.add_adapter(name, config)
        self._params = {name: self._collect(name) for name in unique}
        if not settings.float32_products:
            self._products_in_model_dtype()
        self.active: str | None = None
        self.activate(agents[0])
        lm.agent_hook = self.activate
        if is_batch_invariant(lm.model):  # the new LoRA layers' products must be padded too
            make_batch_invariant(lm.model)

    def _collect(self, name: str) -> list[nn.Parameter]:
        from peft.tuners.lora import LoraLayer

        params = []
        for module in self.peft_model.modules():
            if isinstance(module, LoraLayer):
                for attr in module.adapter_layer_names:
                    container = getattr(module, attr)
                    if name in container:
                        params.extend(container[name].parameters())
        return params

    def _products_in_model_dtype(self) -> None:
        """Run the LoRA products in the dtype of their input (the model's) on float32 weights.

        PEFT keeps adapter weights in float32, so the optimizer's small updates are not rounded
        away, and casts each LoRA layer's input to float32: in a bfloat16 model that is a copy of
        every (B, T, d) input for each adapted projection (q, k and v read the same input thrice)
        and float32 products, forward and backward. Casting the (r, d) weights to the input's dtype
        instead costs nearly nothing, and the gradient still reaches the float32 weights through the
        cast; in a float32 model nothing changes. Not the default: on these CPUs bfloat16 products
        of a few rows (latent and decoding steps) take a slower path than float32 ones, so a training
        step is slower this way (docs/performance.md); it is the usual choice on GPUs.
        """
        from peft.tuners.lora import LoraLayer

        for module in self.peft_model.modules():
            if isinstance(module, LoraLayer):
                module.cast_input_dtype_enabled = False
                for container in (module.lora_A, module.lora_B):
                    for layer in container.values():
                        if not isinstance(layer, PackedLinear):
                            make_packed(layer, pack=False)
                        layer._cast_weight = True

    @property
    def adapter_names(self) -> list[str]:
        return list(self._params)

    def adapter_of(self, agent: str) -> str:
        if agent not in self.names:
            raise DiffMASError(f"no adapter for agent {agent!r}; adapters exist for {list(self.names)}")
        return self.names[agent]

    def activate(self, agent: str) -> None:
        """Make ``agent``'s adapter the one used by the next forward passes."""
        name = self.adapter_of(agent)
        if name == self.active:
            return
        self.peft_model.set_adapter(name)
        for p in self.parameters():  # undo PEFT's freezing of the inactive adapters (module docstring)
            p.requires_grad_(True)
        self.active = name

    def parameters(self, agent: str | None = None) -> Iterator[nn.Parameter]:
        """The LoRA parameters of ``agent``'s adapter, or of all adapters."""
        names = [self.adapter_of(agent)] if agent is not None else self.adapter_names
        for name in names:
            yield from self._params[name]

    def fingerprint(self, agent: str) -> str:
        """What ``agent``'s adapter does to the model: "identity" while every LoRA B matrix is zero
        (as initialised, whatever the seed drew for A), else a hash of all its weights."""
        from peft.tuners.lora import LoraLayer

        name = self.adapter_of(agent)
        # One reduction over every layer's B, so one host synchronisation on a GPU, not one per layer.
        nonzero = [
            m.lora_B[name].weight.detach().ne(0).any()
            for m in self.peft_model.modules()
            if isinstance(m, LoraLayer) and name in m.lora_B
        ]
        if not nonzero or not bool(torch.stack(nonzero).any()):
            return "identity"
        digest = hashlib.sha256()
        for p in self.parameters(agent):
            digest.update(p.detach().float().cpu().numpy().tobytes())
        return digest.hexdigest()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def detach(self) -> None:
        """Stop switching adapters per agent (the LoRA layers stay in the model)."""
        if self.lm.agent_hook == self.activate:
            self.lm.agent_hook = None
