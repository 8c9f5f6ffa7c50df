"""The two shims synthtiger 1.2.1 needs on NumPy 2 and Pillow >= 10. Import this module before
`synthtiger` (every module of this package does); both shims are no-ops on older versions.
"""
import numpy as np
from PIL import ImageFont

# imgaug 0.4 (synthtiger's augmenter library) reads `np.sctypes` at import; NumPy 2 removed it.
if "sctypes" not in np.__dict__:
    np.sctypes = {
        "int": [np.int8, np.int16, np.int32, np.int64],
        "uint": [np.uint8, np.uint16, np.uint32, np.uint64],
        "float": [np.float16, np.float32, np.float64],
        "complex": [np.complex64, np.complex128],
        "others": [bool, object, bytes, str, np.void],
    }


# synthtiger's TextLayer measures text with `FreeTypeFont.getsize`, removed in Pillow 10. The old
# method returned the far corner of the text from the origin: the advance along the writing
# direction (or the ink, if it reaches further) and the ink's far edge across it.
def _getsize(self, text, direction=None, features=None, language=None, stroke_width=0):
    left, top, right, bottom = self.getbbox(text, direction=direction, features=features,
                                            language=language, stroke_width=stroke_width)
    advance = self.getlength(text, direction=direction, features=features, language=language)
    if direction == "ttb":
        return right, max(bottom, int(np.ceil(advance)))
    return max(right, int(np.ceil(advance))), bottom


if not hasattr(ImageFont.FreeTypeFont, "getsize"):
    ImageFont.FreeTypeFont.getsize = _getsize
