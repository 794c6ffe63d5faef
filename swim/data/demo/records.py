"""Annotation records in the formats of DATA.md, built from rendered scenes.

Each builder returns the record (what goes into the annotation file) and its manifest entry
(``scene``, ``objects``: the scene's object index behind each ``annotation`` instance, ``formats``:
the segmentation form of each instance, plus builder-specific keys).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from swim.data.demo.bench import BenchQuestion
from swim.data.demo.encode import encode_rle, encode_rle_list
from swim.data.demo.language import describe, ref
from swim.data.demo.qa import QA, image_questions, pair_questions, video_questions
from swim.data.demo.render import polygon
from swim.data.demo.sample import RenderedScene
from swim.data.tags import strip_tags

Json = dict[str, Any]
DATA_SOURCE = "swim_demo"
SEGMENTATION_FORMATS = ("rle", "rle_list", "polygon")
D_PROMPTS = (
    "Describe the {ref} in detail.",
    "What does the {ref} do in this video?",
    "Tell me how the {ref} moves and what happens to it.",
    "Please give a detailed description of the {ref}.",
)
#: Where ``<ins>`` tags go in a detailed-caption record: the prompt, the answer, or both.
TAG_PLACEMENTS = ("prompt", "answer", "both")


def segmentation(rendered: RenderedScene, k: int, frame: int, form: str) -> Any:
    """Object ``k``'s visible pixels on ``frame`` in one of :data:`SEGMENTATION_FORMATS`.

    A polygon is the shape's outline; it equals the visible pixels only on frames where the
    object is unoccluded, which is the only place :func:`annotate` uses it.
    """
    if form == "rle":
        return encode_rle(rendered.visible[k, frame])
    if form == "rle_list":
        return encode_rle_list(rendered.visible[k, frame])
    obj = rendered.spec.objects[k]
    return [polygon(obj, obj.centre(frame, rendered.spec.num_frames))]


def annotate(
    rendered: RenderedScene,
    k: int,
    form: str,
    rng: np.random.Generator,
    first: bool | None,
    max_frames: int | None = None,
) -> tuple[dict[str, Any], str]:
    """Masks of object ``k`` on a random subset of the frames where it shows >= 30% of itself.

    Args:
        form: requested segmentation form; ``polygon`` falls back to ``rle`` when the object is not
            a square or triangle or is unoccluded on fewer than two frames.
        first: ``True`` to include frame 0, ``False`` to leave it out (if other frames qualify),
            ``None`` for no preference.
        max_frames: cap on the number of annotated frames.

    Returns:
        ``{frame (str): {"segmentation": ...}}`` in frame order, and the form used.
    """
    facts = rendered.facts
    shape = rendered.spec.objects[k].shape
    eligible = facts.annotatable(k, unoccluded=form == "polygon")
    if form == "polygon" and (shape == "circle" or len(eligible) < 2):
        form, eligible = "rle", facts.annotatable(k)
    forced = [0] if first is True and 0 in eligible else []
    pool = [f for f in eligible if f != 0] if first is not None and len(eligible) > 1 else eligible
    high = len(pool) if max_frames is None else min(len(pool), max_frames - len(forced))
    count = int(rng.integers(min(max(1, len(pool) // 2), high), high + 1)) if high > 0 else 0
    chosen = sorted(forced + [int(f) for f in rng.choice(pool, count, replace=False)])
    return {str(f): {"segmentation": segmentation(rendered, k, f, form)} for f in chosen}, form


def detailed_caption(
    rendered: RenderedScene,
    video: str,
    index: int,
    rng: np.random.Generator,
    placement: str,
    form: str,
    first: bool,
) -> tuple[Json, Json]:
    """An NL-Refer-D record describing the scene's target."""
    spec, k = rendered.spec, rendered.spec.target
    prompt = D_PROMPTS[int(rng.integers(len(D_PROMPTS)))].format(ref=ref(spec, k, placement != "answer"))
    answer = describe(spec, rendered.facts, k, placement != "prompt", int(rng.integers(3)))
    annotation, form = annotate(rendered, k, form, rng, first)
    record = {
        "video": video,
        "index": f"videorefer_detailed_caption/{index:06d}",
        "conversations": [
            {"from": "human", "value": f"<video>\n{prompt}"},
            {"from": "gpt", "value": answer},
        ],
        "annotation": [annotation],
    }
    return record, {"scene": spec.name, "objects": [k], "formats": [form], "tags": placement}


def _tagged_order(rendered: RenderedScene, turns: list[str]) -> list[int]:
    """Objects named by the distinct tagged phrases, in order of first appearance."""
    _, spans = strip_tags("\n".join(turns))
    phrases = list(dict.fromkeys(span.phrase for span in spans))
    return [rendered.spec.index_of(p) for p in phrases]


def pair_qa(
    rendered: RenderedScene, video: str, index: int, rng: np.random.Generator, turns: int, tag_answers: bool
) -> tuple[Json, Json] | None:
    """An NL-Refer-Q record: ``turns`` questions about the target and one distractor, or ``None``
    if no distractor allows that many clear questions."""
    spec, facts = rendered.spec, rendered.facts
    target = spec.target
    for other in [int(j) for j in rng.permutation(len(spec.objects)) if j != target]:
        a, b = (target, other) if rng.random() < 0.5 else (other, target)
        found = pair_questions(facts, spec, a, b, rng)
        if len(found) < turns:
            continue
        picked: list[QA] = [found[int(i)] for i in rng.choice(len(found), turns, replace=False)]
        texts = []
        for qa in picked:
            texts.append(qa.question.format(a=ref(spec, a, True), b=ref(spec, b, True)))
            texts.append(qa.answer.format(a=ref(spec, a, tag_answers), b=ref(spec, b, tag_answers)))
        objects = _tagged_order(rendered, texts)
        forms = ["rle_list" if (index + j) % 3 == 0 else "rle" for j in range(len(objects))]
        annotation = [annotate(rendered, k, f, rng, None)[0] for k, f in zip(objects, forms, strict=True)]
        texts[0] = f"<video>\n{texts[0]}"
        record = {
            "video": video,
            "index": f"videorefer_qa/{index:06d}",
            "conversations": _conversation(texts),
            "annotation": annotation,
        }
        kinds = [qa.kind for qa in picked]
        return record, {"scene": spec.name, "objects": objects, "formats": forms, "kinds": kinds}
    return None


def _conversation(texts: list[str]) -> list[Json]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(texts)]


def general_qa(
    rendered: RenderedScene, media: str, image: bool, rng: np.random.Generator, turns: int
) -> tuple[Json, Json]:
    """A LLaVA-Video-178K-style record (no masks, no tags) about a video or a still image."""
    spec, facts = rendered.spec, rendered.facts
    found = image_questions(facts, spec) if image else video_questions(facts, spec)
    picked = [found[int(i)] for i in rng.choice(len(found), min(turns, len(found)), replace=False)]
    texts = [t for qa in picked for t in (qa.question, qa.answer)]
    texts[0] = f"{'<image>' if image else '<video>'}\n{texts[0]}"
    record = {
        "id": f"demo_{spec.name}",
        "image" if image else "video": media,
        "data_source": DATA_SOURCE,
        "conversations": _conversation(texts),
    }
    return record, {"scene": spec.name, "kinds": [qa.kind for qa in picked]}


def bench_q(
    rendered: RenderedScene, video: str, qid: int, question: BenchQuestion, rng: np.random.Generator
) -> tuple[Json, Json, Json]:
    """A VideoRefer-Bench-Q record in original and NL-Refer form, and its manifest entry."""
    annotation, _ = annotate(rendered, question.obj, "rle", rng, None, max_frames=4)
    options, answer = question.lettered([int(i) for i in rng.permutation(len(question.options))])
    common = {
        "id": qid,
        "video": video,
        "type": question.type,
        "options": options,
        "Answer": answer,
        "frame_idx": str(rng.choice([int(f) for f in annotation])),
        "annotation": [annotation],
    }
    original = {**common, "Question": question.question.format(ref="<object0><region>")}
    nl_refer = {
        **common,
        "Question": question.question.format(ref=f"the {ref(rendered.spec, question.obj, True)}"),
    }
    meta = {
        "scene": rendered.spec.name,
        "objects": [question.obj],
        "formats": ["rle"],
        "kind": question.kind,
        "other": question.other,
    }
    return original, nl_refer, meta


def bench_d(
    rendered: RenderedScene, video: str, qid: int, rng: np.random.Generator
) -> tuple[Json, Json, Json]:
    """A VideoRefer-Bench-D record in original and NL-Refer form, and its manifest entry."""
    spec, k = rendered.spec, rendered.spec.target
    annotation, _ = annotate(rendered, k, "rle", rng, None, max_frames=4)
    original = {
        "id": qid,
        "video": video,
        "caption": describe(spec, rendered.facts, k, False, int(rng.integers(3))),
        "frame_idx": str(rng.choice([int(f) for f in annotation])),
        "annotation": [annotation],
    }
    nl_refer = {
        **original,
        "object": ref(spec, k, True),
        "Question": D_PROMPTS[0].format(ref=ref(spec, k, True)),
    }
    return original, nl_refer, {"scene": spec.name, "objects": [k], "formats": ["rle"]}
