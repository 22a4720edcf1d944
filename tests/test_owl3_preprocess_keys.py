"""Image preprocessing constants travel in decoder.gguf: owl-export writes every one the runtime needs
(docs/owl3.md §5), with its GGUF type."""
from __future__ import annotations

import gguf
import pytest

VT = gguf.GGUFValueType
GRID_SQU_6 = [(2, 2), (1, 3), (1, 4), (3, 1), (4, 1), (2, 3), (3, 2)]          # docs/owl3.md §5.2
# key -> (GGUF type, element type or None, value or None when it depends on the variant)
KEYS = {"owl3.vision.image_size": (VT.UINT32, None, None),
        "owl3.vision.image_mean": (VT.ARRAY, VT.FLOAT32, [0.5, 0.5, 0.5]),
        "owl3.vision.image_std": (VT.ARRAY, VT.FLOAT32, [0.5, 0.5, 0.5]),
        "owl3.vision.resample": (VT.STRING, None, "bicubic"),
        "owl3.vision.anchors": (VT.ARRAY, VT.INT32, [x for a in GRID_SQU_6 for x in a]),
        "owl3.vision.anchor_strategy": (VT.STRING, None, "docowl"),
        "owl3.vision.cut_global_view": (VT.BOOL, None, True),
        "owl3.vision.cut_template": (VT.STRING, None, None)}


@pytest.mark.parametrize("variant, size, template", [("1b", 30, "v3_global"), ("7b-240728", 30, "v2_global"),
                                                     ("7b-241101", 28, "v3_global")])
def test_export_writes_every_preprocessing_key(tiny_owl3_model, variant, size, template):
    r = gguf.GGUFReader(tiny_owl3_model(variant)[1] / "decoder.gguf")
    fields = {f.name: f for f in r.fields.values()}
    for key, (vtype, sub, value) in KEYS.items():
        assert key in fields, key
        f = fields[key]
        assert f.types == ([vtype, sub] if sub else [vtype]), key
        if value is not None:
            assert f.contents() == value, key
    assert fields["owl3.vision.image_size"].contents() == size
    assert fields["owl3.vision.cut_template"].contents() == template
