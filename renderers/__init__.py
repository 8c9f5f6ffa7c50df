"""Turn a PDF page, an HTML page or a SynthDoG template into an image plus text geometry. No Beam."""
