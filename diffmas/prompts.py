"""Role prompts per task family, and the chat messages every method builds from them.

All methods share these builders so that single agents, text MAS and latent MAS see the same
wording for the same role: differences in results come from the communication, not the prompts.
"""

from __future__ import annotations

FAMILIES = ("math", "multiple_choice", "code")

SYSTEM_PROMPT = "You are a helpful assistant."

_FAMILY_NOUN = {"math": "math problem", "multiple_choice": "multiple-choice question", "code": "programming task"}

# Role -> instruction. ``{noun}`` is the family's noun ("math problem", ...).
ROLE_PROMPTS: dict[str, str] = {
    "planner": "You are the Planner. Read the {noun} and write a short step-by-step plan to solve it. "
    "Do not compute the final answer.",
    "critic": "You are the Critic. Check the plan so far for the {noun}: point out wrong or missing steps "
    "and say how to fix them. Be brief.",
    "refiner": "You are the Refiner. Using the plan and the critique, write an improved, corrected "
    "step-by-step plan for the {noun}.",
    "judger": "You are the Judger. Using the work of the earlier agents where it helps, solve the "
    "{noun} step by step yourself.",
    "math": "You are a mathematics expert. Analyse the {noun} from a mathematical point of view and "
    "work out the key quantities step by step.",
    "science": "You are a science expert. Analyse the {noun} from a scientific point of view and note "
    "the facts and principles that matter.",
    "code": "You are a programming expert. Analyse the {noun} as a programmer would: what must be "
    "computed, and how, step by step.",
    "summariser": "You are the Summariser. Combine the analyses of the domain experts and solve the "
    "{noun} step by step yourself.",
    "solver": "Solve the {noun} step by step.",
}

# What the final agent (and a single agent) is told about the answer's form, if the task says nothing.
DEFAULT_ANSWER_FORMAT = {
    "math": "Put the final numerical answer in \\boxed{}.",
    # No example letter: a latent_mas judger copied "e.g. \\boxed{B}" for 47 of 50 ARC-Challenge
    # problems. Not "put only the letter": the single agent then skipped its reasoning and wrote a
    # bare "B" for 21 of 24 CommonsenseQA problems (dev/LOG.md). It follows "Reason step by step."
    "multiple_choice": "Then write the letter of the correct option in \\boxed{}.",
    "code": "Write the complete Python solution in one ```python code block.",
}

# What continues an answer from which nothing can be read (diffmas.decoding.AnswerCue): the model
# finishes the sentence inside the \boxed{} the extractors read. None for code: a program cannot
# be cued into existence in a few tokens.
ANSWER_CUE = {
    "math": "\n\nTherefore, the final answer is \\boxed{",
    "multiple_choice": "\n\nTherefore, the letter of the correct option is \\boxed{",
    "code": None,
}


def role_instruction(role: str, family: str, custom: str | None = None) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown task family {family!r}; expected one of {FAMILIES}")
    template = custom if custom is not None else ROLE_PROMPTS[role]
    return template.replace("{noun}", _FAMILY_NOUN[family])


def single_messages(question: str, answer_format: str) -> list[dict[str, str]]:
    content = f"{question}\n\nReason step by step. {answer_format}"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]


def agent_messages(
    instruction: str,
    question: str | None,
    *,
    final: bool,
    answer_format: str,
    earlier: list[tuple[str, str]] | None = None,
    latent_context: bool = False,
) -> list[dict[str, str]]:
    """Messages for one agent of a multi-agent system.

    ``earlier`` holds (agent name, text) pairs for text communication. ``latent_context`` says the
    agent reads earlier agents' thoughts through the shared cache, which it is told; with it,
    ``question`` may be None when the question already is in that cache.
    """
    if question is None and not latent_context:
        raise ValueError("an agent that reads no latent context must be given the question")
    parts = [instruction]
    if latent_context:
        # question None: it is in an earlier agent's prompt, which this agent reads through the cache.
        told = "The question and earlier" if question is None else "Earlier"
        parts.append(f"{told} agents' reasoning is available to you as latent context.")
    if question is not None:
        parts.append(f"Question:\n{question}")
    if earlier:
        shared = "\n\n".join(f"[{name}]\n{text.strip()}" for name, text in earlier)
        parts.append(f"Work of the earlier agents:\n{shared}")
    parts.append(f"Reason step by step. {answer_format}" if final else "Keep it concise.")
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n\n".join(parts)}]
