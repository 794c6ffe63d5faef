"""The synthetic demo dataset: coloured shapes moving over a grey texture, with exact masks.

``python train.py`` with no arguments trains on it (through :func:`ensure_demo`), and it is the
ground truth for the attention-grounding metrics: every target is named by colour and shape among
distractors of other colours, one of them of the target's shape (a ``red circle`` among a ``blue
circle`` and a ``green square``), so the colour word, read against the pixels, picks it out
(:mod:`swim.data.demo.sample` says why not the shape word). CLI: ``python -m swim.data.demo --out DIR``.

Scenes: 8-16 frames at 4 fps (still images: 1 frame), 112-224 px frames (even sizes, mostly
multiples of 28), 3-4 shapes (red/green/blue/yellow circle/square/triangle, 28-56 px) moving in
straight lines over a static noise or stripe texture, painted back to front by ``z`` so shapes
pass in front of each other. Rendering is numpy without anti-aliasing (``render_scene``), so
masks are exact visible pixels. Captions and answers are derived from masks measured on the
render (``facts.py``) and only make claims that hold by a margin.

Layout of ``out_dir`` (the video root; every path in a record is relative to it):

- ``videos/<scene>.mp4``: H.264 (libx264, yuv420p), train, val and even-numbered bench scenes.
- ``frames/<scene>/00000.jpg ...``: odd-numbered bench scenes as JPEG frame folders.
- ``images/still_<i>.png``: still images for image SFT records.
- ``annotations/nl_refer_d.json``, ``annotations/val_nl_refer_d.json``: NL-Refer-D records
  (``video``, ``index`` = ``videorefer_detailed_caption/<i>``, ``conversations``, ``annotation``
  = [target instance]) describing the target's motion and occlusions; ``<ins>`` tags on the
  target's name in the prompt, the answer or both (cycled).
- ``annotations/nl_refer_q.jsonl``: NL-Refer-Q records (``index`` = ``videorefer_qa/<i>``) with
  one or two question turns about two objects; ``annotation`` = [inst0, inst1] in order of first
  appearance of the tagged phrases.
- ``annotations/llava_video.json``: LLaVA-Video-178K-style records (``id``, ``video`` or
  ``image``, ``data_source`` = ``swim_demo``, ``conversations``), no masks, no tags.
- ``annotations/bench_q.json``: VideoRefer-Bench-Q form (``id``, ``video``, ``Question`` with
  ``<object0><region>``, ``type``, ``options`` ``["(A) ...", ...]``, ``Answer``, ``frame_idx``,
  ``annotation`` = [object0]). ``annotations/bench_q_nlrefer.json``: the same records with the
  object named in words, ``the <ins>red circle</ins>``, in ``Question``.
- ``annotations/bench_d.json``: VideoRefer-Bench-D form (``id``, ``video``, ``caption``,
  ``frame_idx``, ``annotation`` = [object]). ``annotations/bench_d_nlrefer.json`` adds
  ``object`` (the tagged name, ``<ins>red circle</ins>``) and ``Question`` (a prompt naming it,
  ``Describe the <ins>red circle</ins> in detail.``).
- ``manifest.json``: ``version``, ``seed``, ``params`` (sizes), ``counts`` (records per file,
  videos, frame folders, images), ``files`` (per annotation file its ``format``, ``count`` and
  per record its ``scene``, ``objects`` = the scene object behind each annotation instance,
  ``formats`` = each instance's segmentation form, plus ``tags``/``kinds``/``kind``/``other``),
  ``media`` (scene name -> path) and ``scenes`` (scene name -> :class:`SceneSpec` as a dict,
  enough to re-render it with ``render_scene(SceneSpec.from_dict(...))``).

``annotation`` instances map a frame index (string) to ``{"segmentation": S}`` on frames where the
object shows at least 30% of its area. ``S`` is COCO RLE with compressed string counts (most),
COCO RLE with uncompressed list counts (column-major runs, first run = zeros), or a polygon
``[[x1, y1, ...]]`` outlining an unoccluded square or triangle (the manifest's ``formats`` says
which). Annotated frames include frame 0 in some records and even frames whose odd partner is not
annotated in others.
"""

from swim.data.demo.generate import (
    DEMO_VERSION,
    MANIFEST,
    DemoParams,
    demo_folder,
    ensure_demo,
    generate_demo,
)
from swim.data.demo.render import render_scene
from swim.data.demo.spec import ObjectSpec, SceneSpec

__all__ = [
    "DEMO_VERSION",
    "MANIFEST",
    "DemoParams",
    "ObjectSpec",
    "SceneSpec",
    "demo_folder",
    "ensure_demo",
    "generate_demo",
    "render_scene",
]
