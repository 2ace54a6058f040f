"""Prompt formats: where the images go, where the question goes, how the answer follows.

A prompt is an image prefix (text plus one placeholder per image) followed by the question
suffix; the answer comes after. The prefix is the same for every question about the same
images, so the engine computes it once and reuses its KV cache. Segments are tokenized
separately, so the split tokenizes identically in training and inference.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE = "<image>"


@dataclass(frozen=True)
class PromptFormat:
    """A LLaVA-1.5-style conversation with numbered images when there are several."""

    id: str  # registry id
    start: str  # text before the first image
    image_label: str  # label before each image when there are several ({i} is 1-based)
    question: str  # question suffix; {question} is replaced
    answer: str  # answer text after the suffix; {answer} is replaced

    def prefix_parts(self, n_images: int) -> list[str]:
        """Text pieces and IMAGE markers of the image prefix."""
        parts = [self.start]
        for i in range(n_images):
            if n_images > 1:
                parts.append(self.image_label.format(i=i + 1))
            parts.append(IMAGE)
        return parts

    def suffix(self, question: str) -> str:
        return self.question.format(question=" ".join(question.split()))

    def answer_text(self, answer: str) -> str:
        return self.answer.format(answer=answer.strip())

    def text(self, question: str, n_images: int = 1) -> str:
        """The whole prompt as text with IMAGE placeholders (for display and logs)."""
        return "".join(self.prefix_parts(n_images)) + self.suffix(question)


PROMPTS: dict[str, PromptFormat] = {
    "vsre": PromptFormat(
        id="vsre",
        start="USER:",
        image_label=" Image {i}:",
        question="\n{question}\nASSISTANT:",
        answer=" {answer}",
    ),
}


def prompt_format(prompt_id: str) -> PromptFormat:
    if prompt_id not in PROMPTS:
        raise ValueError(f"unknown prompt format {prompt_id!r}; known: {sorted(PROMPTS)}")
    return PROMPTS[prompt_id]
