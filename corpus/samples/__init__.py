"""Small sample inputs made on the spot (images with Pillow, PDFs with PyMuPDF, HTML by hand),
for `corpus demo` and the tests. Nothing here is downloaded; little is committed."""
