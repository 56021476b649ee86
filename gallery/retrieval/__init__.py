"""Finding an item in a real photo: region proposals (`regions`), the perceptual-hash copy
channel (`hashes`), local-feature verification (`verify`), match tiers (`tiers`), and their
parameters as one typed object (`params`). Pure functions over pictures and arrays; the
search selector (`selectors/search_by_image.py`) puts them together."""
