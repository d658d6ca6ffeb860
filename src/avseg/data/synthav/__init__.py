"""SynthAV: a synthetic audio-visual benchmark that needs no download.

Generated scenes of moving coloured shapes, each class with its own sound, written in the Ref-AVSBench,
AVSBench-semantic, RVOS and (when asked for) YouTube-VOS layouts so that every reader, model and metric of avseg can
be trained and tested on a CPU. Modules: :mod:`~avseg.data.synthav.scene` (scenes and rendering),
:mod:`~avseg.data.synthav.audio` (timbres and the mix), :mod:`~avseg.data.synthav.expressions` (templates and the
resolver), :mod:`~avseg.data.synthav.writers` (the layouts and the manifest), :mod:`~avseg.data.synthav.commands`
(``avseg data synth``).
"""

from avseg.data.synthav.audio import SAMPLE_RATE, class_pitch, class_sound, mix_scene
from avseg.data.synthav.commands import synth
from avseg.data.synthav.expressions import (
    TEMPLATES,
    Expression,
    Template,
    enumerate_expressions,
    matches,
    null_expressions,
    resolve,
    select_expressions,
)
from avseg.data.synthav.scene import (
    CLASSES,
    COLOURS,
    HELD_OUT_CLASS,
    SEEN_CLASSES,
    SPLITS,
    Scene,
    SceneObject,
    ShapeClass,
    class_index,
    generate_scene,
    render_scene,
    shape_mask,
    split_for_index,
    video_id,
)
from avseg.data.synthav.writers import (
    DEFAULT_LAYOUTS,
    GENERATOR_VERSION,
    LAYOUTS,
    VideoResult,
    generate_video,
    generation_settings,
    label2idx,
    write_tables,
)

__all__ = [
    "CLASSES",
    "COLOURS",
    "DEFAULT_LAYOUTS",
    "GENERATOR_VERSION",
    "HELD_OUT_CLASS",
    "LAYOUTS",
    "SAMPLE_RATE",
    "SEEN_CLASSES",
    "SPLITS",
    "TEMPLATES",
    "Expression",
    "Scene",
    "SceneObject",
    "ShapeClass",
    "Template",
    "VideoResult",
    "class_index",
    "class_pitch",
    "class_sound",
    "enumerate_expressions",
    "generate_scene",
    "generate_video",
    "generation_settings",
    "label2idx",
    "matches",
    "mix_scene",
    "null_expressions",
    "render_scene",
    "resolve",
    "select_expressions",
    "shape_mask",
    "split_for_index",
    "synth",
    "video_id",
    "write_tables",
]
