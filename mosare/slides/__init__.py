"""Whole-slide images: tissue tiling (:mod:`.tissue`), discovery of slide files (:mod:`.discovery`), the tile
loader (:mod:`.tiles`), patch encoders (:mod:`.encoders`) and the extraction runner (:mod:`.extract`)."""
