"""Tiny randomly initialised models with an in-process tokenizer, for tests and smoke runs.

Everything is built in-process (no hub, no files): a byte-level BPE trained in milliseconds on a
built-in text snippet, a ChatML chat template, and a 2-layer model whose weights depend only on
the seed. The shapes keep what matters to latent communication from the real models: grouped
query attention (4 query heads, 2 kv heads) and, for qwen2, untied input/output embeddings.
"""

from __future__ import annotations

import functools

import torch

from diffmas.errors import UnknownNameError
from diffmas.models.loading import stop_token_ids

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY_BPE_VOCAB = 512  # bytes (256) + merges + specials: enough to make words single tokens

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

_CORPUS = """\
You are a helpful assistant. Solve the problem step by step and put the final answer in \\boxed{}.
Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips
in May. How many clips did Natalia sell altogether in April and May?
Answer: In May she sold 48 / 2 = 24 clips. Altogether she sold 48 + 24 = 72 clips. \\boxed{72}
Question: What is 2 + 3? Answer: 2 + 3 = 5. The answer is \\boxed{5}.
Question: A train travels 60 miles per hour for 3 hours. How far does it travel?
Answer: Distance is speed times time, 60 * 3 = 180 miles. The final answer is 180.
The planner writes a plan, the critic checks the plan, the refiner improves it, and the judger
answers the question. Each agent reads what the earlier agents wrote and thinks before answering.
def add(a, b):
    return a + b
Let x be the number of apples. Then 3x + 4 = 19, so 3x = 15 and x = 5.
The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 10 100 1000
Science: water boils at 100 degrees Celsius at sea level; the Earth orbits the Sun.
"""


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    """Train the BPE once per process; the JSON is immutable, so each caller gets a fresh copy."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_BPE_VOCAB,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    return tok.to_str()


def build_tiny_tokenizer():
    """A ``PreTrainedTokenizerFast`` with ChatML specials, left padding and a chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        padding_side="left",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _config(arch: str, vocab_size: int, tokenizer):
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch == "qwen2":  # untied like Qwen2.5-0.5B, so realignment sees distinct W_in and W_out
        return Qwen2Config(tie_word_embeddings=False, **common)
    if arch == "llama":  # tied like SmolLM2, the other case realignment must handle
        return LlamaConfig(tie_word_embeddings=True, **common)
    raise UnknownNameError("tiny architecture", arch, ["llama", "qwen2"])


def build_tiny_model(arch: str = "qwen2", seed: int = 0, dtype=torch.float32, vocab_size=None):
    """A tiny random ``(model, tokenizer)`` pair, identical for identical arguments.

    ``vocab_size`` defaults to ``len(tokenizer)``; a larger value pads the embedding matrices the
    way real checkpoints do (Qwen's 151,936 rows for 151,665 tokens).
    """
    from transformers import AutoModelForCausalLM

    tokenizer = build_tiny_tokenizer()
    vocab = len(tokenizer) if vocab_size is None else int(vocab_size)
    if vocab < len(tokenizer):
        raise ValueError(f"vocab_size {vocab} is smaller than the tokenizer ({len(tokenizer)})")
    config = _config(arch, vocab, tokenizer)
    config._attn_implementation = "sdpa"
    # fork_rng: building a test model must not shift the caller's random stream
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    gen = model.generation_config
    gen.eos_token_id = stop_token_ids(tokenizer)  # <|endoftext|> and the turn end <|im_end|>
    gen.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer
